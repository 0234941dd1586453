using System.Text;
using System.Text.Json.Nodes;

namespace FineTune.Tests.Tokenization;

/// <summary>
/// Builds small but real tokenizer files in a temp folder: a byte-level BPE tokenizer.json in the shape
/// Qwen2 and Llama 3 ship (id of each byte = the byte's value, a few merges) and a qwen.tiktoken.
/// Expected ids in tests follow from these merges by hand, so they check the real BPE machinery.
/// </summary>
internal sealed class TinyTokenizerFiles : IDisposable
{
    // Added tokens follow the vocabulary without a gap, as in every real tokenizer.json (the Rust library renumbers otherwise).
    public const int ImStart = 265, ImEnd = 266, EndOfText = 267, BeginOfText = 268, Think = 269;

    public static readonly string[] Merges = ["h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "Ġwor l", "Ġworl d"];
    // ids 256.. in merge order: he=256 ll=257 hell=258 hello=259 Ġw=260 or=261 Ġwor=262 Ġworl=263 Ġworld=264

    public string Folder { get; } = Directory.CreateTempSubdirectory("finetune-tok-").FullName;

    public static char ByteChar(int b)
    {
        // GPT-2 bytes_to_unicode: printable bytes map to themselves, the rest to 256 + n in order.
        bool printable = b is >= 33 and <= 126 or >= 161 and <= 172 or >= 174 and <= 255;
        if (printable) return (char)b;
        int n = 0;
        for (int i = 0; i < b; i++)
            if (!(i is >= 33 and <= 126 or >= 161 and <= 172 or >= 174 and <= 255)) n++;
        return (char)(256 + n);
    }

    public static string ByteLevel(string text) => new(Encoding.UTF8.GetBytes(text).Select(b => ByteChar(b)).ToArray());

    /// <param name="llama">True: Llama 3 shape (TemplateProcessing adding &lt;|begin_of_text|&gt;).</param>
    /// <param name="mergesAsPairs">True: merges written as [["h","e"],...] as tokenizers ≥ 0.20 saves them.</param>
    public string WriteTokenizerJson(bool llama = false, bool mergesAsPairs = false, JsonObject? tokenizerConfig = null, JsonObject? generationConfig = null)
    {
        var vocab = new JsonObject();
        for (int b = 0; b < 256; b++) vocab[ByteChar(b).ToString()] = b;
        for (int i = 0; i < Merges.Length; i++) vocab[Merges[i].Replace(" ", "")] = 256 + i;

        JsonObject Added(int id, string content, bool special) => new()
        {
            ["id"] = id, ["content"] = content, ["single_word"] = false, ["lstrip"] = false,
            ["rstrip"] = false, ["normalized"] = false, ["special"] = special,
        };
        JsonObject byteLevel = new() { ["type"] = "ByteLevel", ["add_prefix_space"] = false, ["trim_offsets"] = false, ["use_regex"] = false };
        JsonNode merges = mergesAsPairs
            ? new JsonArray(Merges.Select(m => (JsonNode)new JsonArray(m.Split(' ').Select(p => (JsonNode)p!).ToArray())).ToArray())
            : new JsonArray(Merges.Select(m => (JsonNode)m!).ToArray());

        JsonNode postProcessor = llama
            ? new JsonObject
            {
                ["type"] = "Sequence",
                ["processors"] = new JsonArray(
                    byteLevel.DeepClone(),
                    new JsonObject
                    {
                        ["type"] = "TemplateProcessing",
                        ["single"] = new JsonArray(
                            new JsonObject { ["SpecialToken"] = new JsonObject { ["id"] = "<|begin_of_text|>", ["type_id"] = 0 } },
                            new JsonObject { ["Sequence"] = new JsonObject { ["id"] = "A", ["type_id"] = 0 } }),
                        ["pair"] = new JsonArray(),
                        ["special_tokens"] = new JsonObject
                        {
                            ["<|begin_of_text|>"] = new JsonObject { ["id"] = "<|begin_of_text|>", ["ids"] = new JsonArray(BeginOfText), ["tokens"] = new JsonArray("<|begin_of_text|>") },
                        },
                    }),
            }
            : byteLevel.DeepClone();

        var root = new JsonObject
        {
            ["version"] = "1.0",
            ["truncation"] = null,
            ["padding"] = null,
            ["added_tokens"] = new JsonArray(
                Added(ImStart, "<|im_start|>", true), Added(ImEnd, "<|im_end|>", true),
                Added(EndOfText, "<|endoftext|>", true), Added(BeginOfText, "<|begin_of_text|>", true),
                Added(Think, "<think>", false)),
            ["normalizer"] = new JsonObject { ["type"] = "NFC" },
            ["pre_tokenizer"] = new JsonObject
            {
                ["type"] = "Sequence",
                ["pretokenizers"] = new JsonArray(
                    new JsonObject
                    {
                        ["type"] = "Split",
                        ["pattern"] = new JsonObject { ["Regex"] = QwenTwoPattern },
                        ["behavior"] = "Isolated",
                        ["invert"] = false,
                    },
                    byteLevel.DeepClone()),
            },
            ["post_processor"] = postProcessor,
            ["decoder"] = byteLevel.DeepClone(),
            ["model"] = new JsonObject
            {
                ["type"] = "BPE", ["dropout"] = null, ["unk_token"] = null, ["continuing_subword_prefix"] = "",
                ["end_of_word_suffix"] = "", ["fuse_unk"] = false, ["byte_fallback"] = false, ["ignore_merges"] = false,
                ["vocab"] = vocab, ["merges"] = merges,
            },
        };
        File.WriteAllText(Path.Combine(Folder, "tokenizer.json"), root.ToJsonString());
        if (tokenizerConfig is not null) File.WriteAllText(Path.Combine(Folder, "tokenizer_config.json"), tokenizerConfig.ToJsonString());
        if (generationConfig is not null) File.WriteAllText(Path.Combine(Folder, "generation_config.json"), generationConfig.ToJsonString());
        return Path.Combine(Folder, "tokenizer.json");
    }

    /// <summary>Qwen2's pre-tokenizer split pattern, as in its tokenizer.json.</summary>
    public const string QwenTwoPattern =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>A tiktoken file: the 256 single bytes (rank = byte value), then the given merged tokens.</summary>
    public string WriteTiktoken(params string[] merged)
    {
        var lines = Enumerable.Range(0, 256).Select(b => $"{Convert.ToBase64String([(byte)b])} {b}")
            .Concat(merged.Select((t, i) => $"{Convert.ToBase64String(Encoding.UTF8.GetBytes(t))} {256 + i}"));
        string path = Path.Combine(Folder, "qwen.tiktoken");
        File.WriteAllLines(path, lines);
        return path;
    }

    public void Dispose()
    {
        try { Directory.Delete(Folder, recursive: true); } catch (IOException) { }
    }
}
