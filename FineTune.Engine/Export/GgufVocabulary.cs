using System.Text.Json.Nodes;
using FineTune.Engine.Tokenization;

namespace FineTune.Engine.Export;

/// <summary>llama.cpp's token types (gguf-py TokenType).</summary>
public enum GgufTokenType
{
    Normal = 1, Unknown = 2, Control = 3, UserDefined = 4, Unused = 5, Byte = 6,
}

/// <summary>The tokenizer of a model folder is one llama.cpp could not rebuild from GGUF metadata.</summary>
public sealed class GgufExportException(string message) : Exception(message);

/// <summary>
/// The tokenizer metadata llama.cpp builds its vocabulary from, made from tokenizer.json as convert_hf_to_gguf.py's
/// get_vocab_base + SpecialVocab do for byte-level BPE ("gpt2") tokenizers: every id up to the model's vocab_size
/// (ids the tokenizer lacks become "[PAD{id}]", UNUSED), added tokens CONTROL when special (or looking special,
/// like "&lt;|...|&gt;"), USER_DEFINED otherwise, the merges as "a b" strings, and the pre-tokenizer named by its
/// split pattern (llama.cpp's pre-tokenizer types: "qwen2", "llama-bpe", "gpt-2"). convert_hf_to_gguf.py names the
/// pre-tokenizer from a hash of the ids HF gives a test text; that needs the model's own vocabulary, so here the
/// pattern itself decides, and a pattern llama.cpp has no type for is refused rather than guessed.
/// </summary>
public sealed record GgufVocabulary(
    string Model,
    string PreTokenizer,
    IReadOnlyList<string> Tokens,
    IReadOnlyList<GgufTokenType> Types,
    IReadOnlyList<string> Merges)
{
    /// <summary>Split patterns of HF tokenizer.json files → llama.cpp pre-tokenizer type (llama-vocab.cpp regexes).</summary>
    public static readonly IReadOnlyDictionary<string, string> PreTokenizerByPattern = new Dictionary<string, string>(StringComparer.Ordinal)
    {
        // Qwen1.5 / Qwen2 / Qwen2.5 / Qwen3: single digits.
        [@"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"] = "qwen2",
        // Llama 3: digits in groups of up to three.
        [@"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"] = "llama-bpe",
    };

    /// <summary>Reads tokenizer.json (and its added tokens) for a model whose embedding has <paramref name="vocabSize"/> rows.</summary>
    public static GgufVocabulary FromTokenizerJson(string tokenizerJsonPath, int vocabSize, IReadOnlySet<int>? specialIds = null)
    {
        if (!File.Exists(tokenizerJsonPath))
            throw new GgufExportException($"{tokenizerJsonPath} does not exist: GGUF export needs the model's tokenizer.json (Qwen v1's qwen.tiktoken is not supported).");
        JsonObject root = TokenizerSettings.ReadObject(tokenizerJsonPath);
        var model = root["model"] as JsonObject ?? throw new GgufExportException($"{tokenizerJsonPath} has no model section.");
        string type = model["type"]?.GetValue<string>() ?? "BPE";
        if (type != "BPE")
            throw new GgufExportException($"{tokenizerJsonPath} is a {type} tokenizer; GGUF export supports byte-level BPE tokenizers (Qwen2/2.5/3, Llama 3, Mistral with tokenizer.json BPE).");
        if (!IsByteLevel(root))
            throw new GgufExportException($"{tokenizerJsonPath} is a BPE tokenizer without byte-level pre-tokenization (a SentencePiece-style vocabulary); GGUF export supports byte-level BPE tokenizers only.");
        string pre = PreTokenizerOf(root, tokenizerJsonPath);

        var byId = new Dictionary<int, string>();
        if (model["vocab"] is JsonObject vocab)
            foreach (var (token, id) in vocab) byId[id!.GetValue<int>()] = token;
        var added = new Dictionary<int, (string Content, bool Special)>();
        if (root["added_tokens"] is JsonArray addedTokens)
            foreach (var node in addedTokens.OfType<JsonObject>())
            {
                int id = node["id"]!.GetValue<int>();
                string content = node["content"]!.GetValue<string>();
                added[id] = (content, (node["special"]?.GetValue<bool>() ?? false) || (specialIds?.Contains(id) ?? false));
                byId[id] = content;
            }
        int maxId = byId.Count == 0 ? -1 : byId.Keys.Max();
        if (maxId >= vocabSize)
            throw new GgufExportException($"The tokenizer has id {maxId}, but the model's embedding has only {vocabSize} rows (config.json vocab_size): the tokenizer does not belong to this model.");

        var tokens = new string[vocabSize];
        var types = new GgufTokenType[vocabSize];
        for (int i = 0; i < vocabSize; i++)
        {
            if (!byId.TryGetValue(i, out string? token))
            {
                tokens[i] = $"[PAD{i}]";
                types[i] = GgufTokenType.Unused;
            }
            else if (added.TryGetValue(i, out var a))
            {
                tokens[i] = a.Special || LooksSpecial(token) ? token : token.Replace("\u2581", " ", StringComparison.Ordinal);
                types[i] = a.Special || LooksSpecial(token) ? GgufTokenType.Control : GgufTokenType.UserDefined;
            }
            else
            {
                tokens[i] = token;
                types[i] = GgufTokenType.Normal;
            }
        }
        return new GgufVocabulary("gpt2", pre, tokens, types, ReadMerges(model, tokenizerJsonPath));
    }

    /// <summary>convert_hf_to_gguf.py does_token_look_special: added tokens such as "&lt;|im_end|&gt;" are control tokens even when not marked special.</summary>
    public static bool LooksSpecial(string token) =>
        token is "<pad>" or "<mask>" or "<2mass>" or "[@BOS@]"
        || (token.StartsWith("<|", StringComparison.Ordinal) && token.EndsWith("|>", StringComparison.Ordinal))
        || (token.StartsWith("<｜", StringComparison.Ordinal) && token.EndsWith("｜>", StringComparison.Ordinal))
        || (token.StartsWith("<unused", StringComparison.Ordinal) && token.EndsWith('>'));

    private static bool IsByteLevel(JsonObject root) =>
        Nodes(root["pre_tokenizer"]).Any(n => n["type"]?.GetValue<string>() == "ByteLevel")
        || (root["decoder"] as JsonObject)?["type"]?.GetValue<string>() == "ByteLevel";

    private static string PreTokenizerOf(JsonObject root, string path)
    {
        var nodes = Nodes(root["pre_tokenizer"]).ToList();
        var split = nodes.FirstOrDefault(n => n["type"]?.GetValue<string>() == "Split");
        if (split is null)
        {
            // A lone ByteLevel pre-tokenizer with its own regex is GPT-2's.
            bool gpt2 = nodes.Any(n => n["type"]?.GetValue<string>() == "ByteLevel" && (n["use_regex"]?.GetValue<bool>() ?? true));
            return gpt2 ? "gpt-2"
                : throw new GgufExportException($"{path}: the pre-tokenizer has no split pattern, so llama.cpp's pre-tokenizer type cannot be chosen.");
        }
        string? pattern = (split["pattern"] as JsonObject)?["Regex"]?.GetValue<string>();
        if (pattern is not null && PreTokenizerByPattern.TryGetValue(pattern, out string? name)) return name;
        throw new GgufExportException(
            $"{path}: llama.cpp has no pre-tokenizer type for the split pattern {pattern ?? "(a plain string)"}; " +
            $"supported patterns are Qwen2/Qwen3's ('qwen2') and Llama 3's ('llama-bpe').");
    }

    private static IEnumerable<JsonObject> Nodes(JsonNode? node)
    {
        if (node is not JsonObject o) yield break;
        if (o["type"]?.GetValue<string>() == "Sequence" && o["pretokenizers"] is JsonArray list)
        {
            foreach (var child in list.OfType<JsonObject>()) yield return child;
        }
        else yield return o;
    }

    /// <summary>"a b" strings; the list form (transformers ≥ 4.45) joined the same way, spaces inside parts written as U+0120 (SpecialVocab).</summary>
    private static List<string> ReadMerges(JsonObject model, string path)
    {
        var merges = new List<string>();
        if (model["merges"] is not JsonArray list) return merges;
        foreach (var item in list)
        {
            switch (item)
            {
                case JsonValue v when v.TryGetValue(out string? s):
                    merges.Add(s);
                    break;
                case JsonArray pair when pair.Count == 2:
                    merges.Add(string.Join(' ', pair.Select(p => p!.GetValue<string>().Replace(" ", "\u0120", StringComparison.Ordinal))));
                    break;
                default:
                    throw new GgufExportException($"{path}: a merge is neither \"a b\" nor [\"a\", \"b\"].");
            }
        }
        return merges;
    }
}
