using System.Text.Json.Nodes;
using FineTune.Engine.Tokenization;
using static FineTune.Tests.Tokenization.TinyTokenizerFiles;

namespace FineTune.Tests.Tokenization;

public class TokenizerJsonTests
{
    private static int B(char c) => c; // ids of single bytes equal the byte value in the tiny vocabulary

    [Fact]
    public void Encodes_with_merges_and_byte_fallback_for_chinese()
    {
        using var files = new TinyTokenizerFiles();
        using var tokenizer = new TokenizerJson(files.WriteTokenizerJson());

        Assert.Equal([259], tokenizer.Encode("hello"));
        Assert.Equal([259, 264], tokenizer.Encode("hello world"));
        // 你 = E4 BD A0: no merges, so three byte tokens.
        Assert.Equal([0xE4, 0xBD, 0xA0], tokenizer.Encode("你"));
        Assert.Equal("hello world你", tokenizer.Decode([259, 264, 0xE4, 0xBD, 0xA0]));
    }

    [Fact]
    public void Special_token_strings_in_text_become_their_ids()
    {
        using var files = new TinyTokenizerFiles();
        using var tokenizer = new TokenizerJson(files.WriteTokenizerJson());

        var ids = tokenizer.Encode("<|im_start|>user\nhello<|im_end|>");

        Assert.Equal([ImStart, B('u'), B('s'), B('e'), B('r'), B('\n'), 259, ImEnd], ids);
        Assert.Equal("<|im_start|>user\nhello<|im_end|>", tokenizer.Decode(ids));
        Assert.Equal("user\nhello", tokenizer.Decode(ids, skipSpecialTokens: true));
    }

    [Fact]
    public void Non_special_added_tokens_are_split_out_and_kept_when_skipping_specials()
    {
        using var files = new TinyTokenizerFiles();
        using var tokenizer = new TokenizerJson(files.WriteTokenizerJson());

        var ids = tokenizer.Encode("<think>hello<|endoftext|>");

        Assert.Equal([Think, 259, EndOfText], ids);
        Assert.Equal("<think>hello", tokenizer.Decode(ids, skipSpecialTokens: true));
    }

    [Fact]
    public void Qwen_shape_adds_nothing_and_llama_shape_adds_bos_only_when_asked()
    {
        using var files = new TinyTokenizerFiles();
        using (var qwen = new TokenizerJson(files.WriteTokenizerJson()))
            Assert.Equal([259], qwen.Encode("hello", addSpecialTokens: true));

        using var llama = new TokenizerJson(files.WriteTokenizerJson(llama: true));
        Assert.Equal([BeginOfText, 259], llama.Encode("hello"));
        Assert.Equal([259], llama.Encode("hello", addSpecialTokens: false));
        Assert.Equal([BeginOfText], llama.Encode(""));
        // A BOS written in the text is not doubled by encoding without specials.
        Assert.Equal([BeginOfText, 259], llama.Encode("<|begin_of_text|>hello", addSpecialTokens: false));
    }

    [Fact]
    public void Reads_merges_written_as_pairs_by_newer_tokenizers()
    {
        using var files = new TinyTokenizerFiles();
        using var tokenizer = new TokenizerJson(files.WriteTokenizerJson(mergesAsPairs: true));

        Assert.Equal([259, 264], tokenizer.Encode("hello world"));
    }

    [Fact]
    public void Loader_reads_special_tokens_template_and_generation_eos_ids()
    {
        using var files = new TinyTokenizerFiles();
        files.WriteTokenizerJson(
            tokenizerConfig: new JsonObject
            {
                ["bos_token"] = null,
                ["eos_token"] = new JsonObject { ["__type"] = "AddedToken", ["content"] = "<|im_end|>" },
                ["pad_token"] = "<|endoftext|>",
                ["chat_template"] = new JsonArray(
                    new JsonObject { ["name"] = "tool_use", ["template"] = "T" },
                    new JsonObject { ["name"] = "default", ["template"] = "D" }),
            },
            generationConfig: new JsonObject { ["eos_token_id"] = new JsonArray(ImEnd, EndOfText) });

        var tokenizer = TokenizerLoader.Load(files.Folder);

        Assert.IsType<TokenizerJson>(tokenizer);
        Assert.Equal(ImEnd, tokenizer.EosTokenId);
        Assert.Equal(EndOfText, tokenizer.PadTokenId);
        Assert.Null(tokenizer.BosTokenId);
        Assert.Equal([ImEnd, EndOfText], tokenizer.EosTokenIds);
        Assert.Equal("D", tokenizer.ChatTemplate);
        Assert.Equal(Think + 1, tokenizer.VocabSize);
        Assert.Equal(259, tokenizer.TokenToId("hello"));
        Assert.Null(tokenizer.TokenToId("not-a-token"));
        Assert.Equal("<|im_end|>", tokenizer.IdToToken(ImEnd));
        ((IDisposable)tokenizer).Dispose();
    }

    [Fact]
    public void Chat_template_jinja_file_wins_over_the_config_and_generation_eos_may_be_an_int()
    {
        using var files = new TinyTokenizerFiles();
        files.WriteTokenizerJson(
            tokenizerConfig: new JsonObject { ["eos_token"] = "<|endoftext|>", ["chat_template"] = "old" },
            generationConfig: new JsonObject { ["eos_token_id"] = ImEnd });
        File.WriteAllText(Path.Combine(files.Folder, "chat_template.jinja"), "new");

        var settings = TokenizerSettings.Load(files.Folder);

        Assert.Equal("new", settings.ChatTemplate);
        Assert.Equal([ImEnd], settings.GenerationEosTokenIds);
        using var tokenizer = new TokenizerJson(Path.Combine(files.Folder, "tokenizer.json"), settings);
        Assert.Equal([EndOfText, ImEnd], tokenizer.EosTokenIds);
    }

    [Fact]
    public void Llama_class_tokenizers_follow_add_bos_and_add_eos_from_the_config()
    {
        using var files = new TinyTokenizerFiles();
        files.WriteTokenizerJson(llama: true, tokenizerConfig: new JsonObject
        {
            ["tokenizer_class"] = "LlamaTokenizer",
            ["bos_token"] = "<|begin_of_text|>",
            ["eos_token"] = "<|endoftext|>",
            ["add_bos_token"] = true,
            ["add_eos_token"] = true,
        });

        using var tokenizer = (TokenizerJson)TokenizerLoader.Load(files.Folder);

        Assert.Equal([BeginOfText, 259, EndOfText], tokenizer.Encode("hello"));
    }

    [Fact]
    public void Clean_up_tokenization_spaces_matches_transformers()
    {
        Assert.Equal("Hi, it's me. Don't!", TokenizerJson.CleanUpTokenization("Hi , it 's me . Do n't !"));
    }

    [Fact]
    public void Ids_past_the_vocabulary_decode_to_nothing_and_missing_files_give_clear_errors()
    {
        using var files = new TinyTokenizerFiles();
        using var tokenizer = new TokenizerJson(files.WriteTokenizerJson());

        // Like HF: a model's padded embedding rows (vocab_size > tokenizer size) produce no text.
        Assert.Equal("hello", tokenizer.Decode([259, 999_999]));
        var missing = Assert.Throws<TokenizerLoadException>(() => TokenizerLoader.Load(Path.Combine(files.Folder, "nope")));
        Assert.Contains("does not exist", missing.Message);
        File.Delete(Path.Combine(files.Folder, "tokenizer.json"));
        var none = Assert.Throws<TokenizerLoadException>(() => TokenizerLoader.Load(files.Folder));
        Assert.Contains("tokenizer.json", none.Message);
    }

    [Fact]
    public void Streaming_decoder_holds_back_half_characters()
    {
        using var files = new TinyTokenizerFiles();
        using var tokenizer = new TokenizerJson(files.WriteTokenizerJson());
        var stream = new StreamingDecoder(tokenizer);

        var pieces = new[] { 259, 0xE4, 0xBD, 0xA0, 264, ImEnd }.Select(stream.Push).ToList();

        Assert.Equal(["hello", "", "", "你", " world", ""], pieces);
        Assert.Equal("", stream.Flush());
    }

    [Fact]
    public void Streaming_decoder_flushes_an_unfinished_character_as_replacement()
    {
        using var files = new TinyTokenizerFiles();
        using var tokenizer = new TokenizerJson(files.WriteTokenizerJson());
        var stream = new StreamingDecoder(tokenizer);

        Assert.Equal("hello", stream.Push(259));
        Assert.Equal("", stream.Push(0xE4));
        Assert.Equal("\uFFFD", stream.Flush());
    }
}
