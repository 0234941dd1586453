using FineTune.Engine.Tokenization;

namespace FineTune.Tests.Tokenization;

public class QwenTiktokenTokenizerTests
{
    [Fact]
    public void Encodes_by_rank_and_numbers_specials_after_the_ranks()
    {
        using var files = new TinyTokenizerFiles();
        string path = files.WriteTiktoken("he", "ll", "hell", "hello", " w", "or", " wor", " worl", " world");
        var tokenizer = new QwenTiktokenTokenizer(path);
        int endOfText = 256 + 9;

        Assert.Equal([259], tokenizer.Encode("hello"));
        Assert.Equal([259, 264], tokenizer.Encode("hello world"));
        Assert.Equal([endOfText + 1, 'u', 's', 'e', 'r', '\n', 259, endOfText + 2], tokenizer.Encode("<|im_start|>user\nhello<|im_end|>"));
        Assert.Equal(endOfText, tokenizer.TokenToId("<|endoftext|>"));
        Assert.Equal(endOfText + 3 + 204, tokenizer.TokenToId("<|extra_204|>"));
        Assert.Equal(endOfText + 3 + 205, tokenizer.VocabSize);
        Assert.Null(tokenizer.BosTokenId);
        Assert.Contains(endOfText + 2, tokenizer.EosTokenIds);
    }

    [Fact]
    public void Decodes_bytes_across_tokens_and_skips_specials_on_request()
    {
        using var files = new TinyTokenizerFiles();
        var tokenizer = new QwenTiktokenTokenizer(files.WriteTiktoken("he"));
        var ids = tokenizer.Encode("<|im_start|>你好<|im_end|>");

        Assert.Equal(2 + 6, ids.Count); // 你好 is six UTF-8 bytes, no merges
        Assert.Equal("<|im_start|>你好<|im_end|>", tokenizer.Decode(ids));
        Assert.Equal("你好", tokenizer.Decode(ids, skipSpecialTokens: true));
        Assert.Equal("\uFFFD", tokenizer.Decode([ids[1]]));
        Assert.Equal("你好", tokenizer.Decode([.. ids.Skip(1).Take(6), 99_999]));
    }

    [Fact]
    public void Normalizes_to_nfc_like_qwen_tokenizer()
    {
        using var files = new TinyTokenizerFiles();
        var tokenizer = new QwenTiktokenTokenizer(files.WriteTiktoken());

        // "é" written as e + combining acute becomes the single code point C3 A9.
        Assert.Equal([0xC3, 0xA9], tokenizer.Encode("e\u0301"));
    }

    [Fact]
    public void Loader_picks_tiktoken_when_there_is_no_tokenizer_json()
    {
        using var files = new TinyTokenizerFiles();
        files.WriteTiktoken("he");

        Assert.IsType<QwenTiktokenTokenizer>(TokenizerLoader.Load(files.Folder));
    }
}
