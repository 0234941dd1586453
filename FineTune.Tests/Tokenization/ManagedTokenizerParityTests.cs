using FineTune.Engine.Tokenization;
using FineTune.Tests.Adapters;
using FineTune.Tests.Export;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;

namespace FineTune.Tests.Tokenization;

/// <summary>
/// The managed byte-level BPE (used where Tokenizers.DotNet has no native library: Windows, macOS, Linux on ARM) gives
/// the Rust HF tokenizers library's ids and text, exactly: on every fixture tokenizer.json (against the native library
/// and HF's golden ids), on a long mixed zh/en/emoji text, and at real scale on Qwen3's tokenizer.json.
/// </summary>
[Trait(Category.Name, Category.Parity)]
public class ManagedTokenizerParityTests
{
    public static TheoryData<string> Models => new() { "qwen2", "qwen2-v5", "qwen3", "llama3", "mistral" };

    /// <summary>What trips tokenizers up: CJK (BMP and astral), emoji next to letters, ZWJ sequences, flags, digits,
    /// contractions in both cases, spacing runs, tabs and CRLF, combining marks (NFC), full-width punctuation, specials.</summary>
    public static readonly string LongMixedText = string.Concat(Enumerable.Repeat(
        "第一個微調專案：用 QLoRA 微調 Qwen2.5，LoRA r=16, alpha=32。😀abc 🤗Transformers 👨‍👩‍👧‍👦 family 🇹🇼台灣 " +
        "I'M here, you're there; don't STOP'LL 'S 12345 67.89 3,000,000 ２０２６年 𠮷野家 𝟘𝟙 Ⅻ\n" +
        "  indented\tand\ttabbed\r\n\r\n    trailing   \n" +
        "Cafe\u0301 naïve e\u0301cole ｶﾀｶﾅ カタカナ 한국어 עברית العربية Ελληνικά ǅ ﬁ " +
        "<|im_start|>user\n請問退貨政策？<|im_end|>\n<|im_start|>assistant\n購買後7天內可申請退貨。<|im_end|><|endoftext|>" +
        "<|begin_of_text|><s>[INST] hi [/INST]</s> ```python\ndef f(x):\n    return x**2  # 平方\n``` " +
        "http://example.com/path?q=1&r=2 user@mail.tw #hashtag @mention ~~~ ... !!! ??? ———— \u00a0nbsp\u3000全形空白 " +
        "\U0001F600\U0001F601 \U0001F9D1\u200D\U0001F4BB end.", 6));

    private static string Folder(string model) => TestFiles.Fixture($"models/{model}");

    private static void AssertSameAsNative(string tokenizerJson, TokenizerSettings settings, IEnumerable<string> texts, string what)
    {
        using var native = new TokenizerJson(tokenizerJson, settings, TokenizerJson.Runtime.Native);
        using var managed = new TokenizerJson(tokenizerJson, settings, TokenizerJson.Runtime.Managed);
        Assert.False(native.IsManaged);
        Assert.True(managed.IsManaged);
        foreach (string text in texts)
        {
            var want = native.Encode(text);
            var got = managed.Encode(text);
            int first = Enumerable.Range(0, Math.Min(want.Count, got.Count)).FirstOrDefault(i => want[i] != got[i], Math.Min(want.Count, got.Count));
            Assert.True(want.SequenceEqual(got),
                $"{what}: ids differ from token {first} on ({text[..Math.Min(60, text.Length)]}...): native [{string.Join(",", want.Skip(first).Take(8))}] managed [{string.Join(",", got.Skip(first).Take(8))}]");
            Assert.Equal(native.Encode(text, addSpecialTokens: false), managed.Encode(text, addSpecialTokens: false));
            Assert.Equal(native.Decode(want), managed.Decode(want));
            Assert.Equal(native.Decode(want, skipSpecialTokens: true), managed.Decode(want, skipSpecialTokens: true));
        }
        // Decoding any run of ids, including ones cutting a character's bytes in half, gives the same text.
        var ids = native.Encode(texts.Last(), addSpecialTokens: false);
        for (int start = 0; start + 3 <= ids.Count; start += 7)
            Assert.Equal(native.Decode(ids.Skip(start).Take(3)), managed.Decode(ids.Skip(start).Take(3)));
    }

    [Theory]
    [MemberData(nameof(Models))]
    public void Managed_gives_the_rust_tokenizers_ids_on_every_fixture(string model)
    {
        var goldens = TokenizerParityTests.Golden(model).GetProperty("tokenizer").EnumerateArray().ToList();
        var settings = TokenizerSettings.Load(Folder(model));
        string path = Path.Combine(Folder(model), "tokenizer.json");

        AssertSameAsNative(path, settings, goldens.Select(g => g.GetProperty("text").GetString()!).Append(LongMixedText), model);

        // And HF's own ids, written by transformers into golden.json.
        using var managed = new TokenizerJson(path, settings, TokenizerJson.Runtime.Managed);
        foreach (var golden in goldens)
        {
            string text = golden.GetProperty("text").GetString()!;
            Assert.Equal(TokenizerParityTests.Ints(golden.GetProperty("ids")), managed.Encode(text));
            Assert.Equal(golden.GetProperty("decoded_skip_special").GetString(), managed.Decode(TokenizerParityTests.Ints(golden.GetProperty("ids")), skipSpecialTokens: true));
        }
    }

    [NpmTokenizerFact]
    public void Managed_gives_the_rust_tokenizers_ids_on_qwen3s_real_tokenizer()
    {
        string folder = Qwen3TokenizerGgufTests.Models ?? throw new InvalidOperationException("Run tools/fixtures/npm-tokenizers.sh first.");
        var settings = TokenizerSettings.Load(folder);
        string[] texts = [.. TokenizerParityTests.Golden("qwen3").GetProperty("tokenizer").EnumerateArray().Select(g => g.GetProperty("text").GetString()!),
            LongMixedText];

        AssertSameAsNative(Path.Combine(folder, "tokenizer.json"), settings, texts, "Qwen3 tokenizer.json");

        using var managed = new TokenizerJson(Path.Combine(folder, "tokenizer.json"), settings, TokenizerJson.Runtime.Managed);
        Assert.True(managed.Encode(LongMixedText).Count > 1000);
        Assert.Equal(151_669, managed.VocabSize);
    }

    [Fact]
    public void Tokenizers_it_cannot_run_exactly_are_refused_by_name()
    {
        string folder = TestPaths.NewTempFolder("finetune-managed-tok");
        try
        {
            string path = Path.Combine(folder, "tokenizer.json");
            File.WriteAllText(path, """{"model":{"type":"Unigram","vocab":[["a",0.0]]},"added_tokens":[]}""");
            var e = Assert.Throws<TokenizerLoadException>(() => new TokenizerJson(path, null, TokenizerJson.Runtime.Managed));
            Assert.Contains("model type Unigram", e.Message);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}

