using System.Text.Json;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;

namespace FineTune.Tests.Tokenization;

/// <summary>
/// Ids and text against HF transformers 5.17 / tokenizers 0.23 / tiktoken 0.14 on the tiny fixture models
/// (FineTune.Tests/Fixtures/models/*/golden.json, made by tools/fixtures/make_fixtures.py). Exact equality.
/// </summary>
[Trait(Category.Name, Category.Parity)]
public class TokenizerParityTests
{
    public static TheoryData<string> Models => new() { "qwen2", "qwen2-v5", "qwen3", "llama3", "mistral", "qwen-v1" };

    internal static JsonElement Golden(string model)
    {
        using var stream = File.OpenRead(TestFiles.Fixture($"models/{model}/golden.json"));
        return JsonDocument.Parse(stream).RootElement.Clone();
    }

    internal static int[] Ints(JsonElement array) => array.EnumerateArray().Select(x => x.GetInt32()).ToArray();

    [Theory]
    [MemberData(nameof(Models))]
    public void Encode_and_decode_match_hf(string model)
    {
        var tokenizer = TokenizerLoader.Load(TestFiles.Fixture($"models/{model}"));
        try
        {
            foreach (var golden in Golden(model).GetProperty("tokenizer").EnumerateArray())
            {
                string text = golden.GetProperty("text").GetString()!;
                int[] ids = Ints(golden.GetProperty("ids"));
                Assert.True(ids.SequenceEqual(tokenizer.Encode(text)), $"{model} ids of {text}: [{string.Join(",", tokenizer.Encode(text))}] != [{string.Join(",", ids)}]");
                Assert.Equal(Ints(golden.GetProperty("ids_no_special")), tokenizer.Encode(text, addSpecialTokens: false));
                Assert.Equal(golden.GetProperty("decoded").GetString(), tokenizer.Decode(ids));
                Assert.Equal(golden.GetProperty("decoded_skip_special").GetString(), tokenizer.Decode(ids, skipSpecialTokens: true));
            }
        }
        finally { (tokenizer as IDisposable)?.Dispose(); }
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void Chat_text_with_special_tokens_encodes_like_hf(string model)
    {
        var tokenizer = TokenizerLoader.Load(TestFiles.Fixture($"models/{model}"));
        try
        {
            foreach (var chat in Golden(model).GetProperty("chat").EnumerateArray())
            {
                string text = chat.GetProperty("text").GetString()!;
                int[] ids = Ints(chat.GetProperty("ids"));
                Assert.Equal(ids, tokenizer.Encode(text, addSpecialTokens: false));
                Assert.Equal(text, tokenizer.Decode(ids));
            }
        }
        finally { (tokenizer as IDisposable)?.Dispose(); }
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void Streaming_decode_joins_to_the_full_decode(string model)
    {
        var tokenizer = TokenizerLoader.Load(TestFiles.Fixture($"models/{model}"));
        try
        {
            foreach (var golden in Golden(model).GetProperty("tokenizer").EnumerateArray())
            {
                int[] ids = Ints(golden.GetProperty("ids_no_special"));
                var stream = new StreamingDecoder(tokenizer);
                var pieces = ids.Select(stream.Push).Append(stream.Flush()).ToList();
                Assert.Equal(golden.GetProperty("decoded_skip_special").GetString(), string.Concat(pieces));
                Assert.DoesNotContain(pieces, p => p.Contains('\uFFFD'));
            }
        }
        finally { (tokenizer as IDisposable)?.Dispose(); }
    }

    [Fact]
    public void Special_ids_follow_the_configs()
    {
        using var qwen2 = (TokenizerJson)TokenizerLoader.Load(TestFiles.Fixture("models/qwen2"));
        Assert.Equal(902, qwen2.EosTokenId);
        Assert.Equal(900, qwen2.PadTokenId);
        Assert.Null(qwen2.BosTokenId);
        Assert.Equal([902, 900], qwen2.EosTokenIds);

        using var llama = (TokenizerJson)TokenizerLoader.Load(TestFiles.Fixture("models/llama3"));
        Assert.Equal(900, llama.BosTokenId);
        Assert.Equal(904, llama.EosTokenId);
        Assert.Equal([904, 901], llama.EosTokenIds);

        var qwenV1 = TokenizerLoader.Load(TestFiles.Fixture("models/qwen-v1"));
        Assert.Equal(900, qwenV1.EosTokenId);
        Assert.Equal(900, qwenV1.PadTokenId);
        Assert.Equal(902, qwenV1.TokenToId("<|im_end|>"));
        Assert.Contains(902, qwenV1.EosTokenIds);
    }
}
