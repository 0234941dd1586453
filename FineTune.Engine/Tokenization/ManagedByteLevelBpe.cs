using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace FineTune.Engine.Tokenization;

/// <summary>
/// The managed run of a byte-level BPE tokenizer.json (Qwen2/2.5/3, Llama 3, Mistral's byte-level ones), for the
/// platforms where Tokenizers.DotNet has no native build (it ships one for linux-x64 only). It follows HF tokenizers'
/// pipeline: added tokens split out first (leftmost, longest), the NFC normalizer, the Split pre-tokenizer's regex
/// (Isolated) and/or ByteLevel's GPT-2 regex, then Microsoft.ML.Tokenizers' BPE with byte-level input over each piece
/// (with ignore_merges: a piece already in the vocabulary is one token). Decoding is the ByteLevel decoder.
/// Anything else in tokenizer.json is refused with <see cref="TokenizerLoadException"/>, never approximated.
/// </summary>
internal sealed class ManagedByteLevelBpe
{
    /// <summary>GPT-2's pattern, which ByteLevel applies when use_regex is true.</summary>
    private const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+";

    private readonly BpeTokenizer _bpe;
    private readonly Dictionary<string, int> _vocab;
    private readonly Dictionary<int, string> _tokens;
    private readonly Dictionary<string, int> _added;
    private readonly Dictionary<char, string[]> _addedByFirstChar;
    private readonly bool _nfc;
    private readonly bool _ignoreMerges;
    private readonly Regex[] _splits;

    public ManagedByteLevelBpe(JsonObject root, string path)
    {
        var model = root["model"] as JsonObject;
        if (model?["type"]?.GetValue<string>() is not "BPE")
            throw Unsupported(path, $"model type {model?["type"]?.GetValue<string>() ?? "(none)"}");
        if (model["byte_fallback"]?.GetValue<bool>() == true || model["continuing_subword_prefix"]?.GetValue<string>() is { Length: > 0 } ||
            model["end_of_word_suffix"]?.GetValue<string>() is { Length: > 0 })
            throw Unsupported(path, "a BPE with byte_fallback or subword prefixes/suffixes (SentencePiece-style)");
        _ignoreMerges = model["ignore_merges"]?.GetValue<bool>() ?? false;

        _nfc = root["normalizer"] switch
        {
            null => false,
            JsonObject { } n when n["type"]?.GetValue<string>() == "NFC" => true,
            var n => throw Unsupported(path, $"normalizer {n.ToJsonString()}"),
        };
        _splits = PreTokenizerRegexes(root["pre_tokenizer"] as JsonObject, path);
        if (root["decoder"] is JsonObject decoder && decoder["type"]?.GetValue<string>() != "ByteLevel")
            throw Unsupported(path, $"decoder {decoder["type"]}");

        _vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var (token, id) in model["vocab"] as JsonObject ?? throw Unsupported(path, "a BPE without vocab"))
            _vocab[token] = id!.GetValue<int>();
        _tokens = new Dictionary<int, string>(_vocab.Count);
        foreach (var (token, id) in _vocab) _tokens.TryAdd(id, token);

        _added = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var token in (root["added_tokens"] as JsonArray ?? []).OfType<JsonObject>())
        {
            if (token["content"]?.GetValue<string>() is not { Length: > 0 } content || token["id"] is null) continue;
            if (token["lstrip"]?.GetValue<bool>() == true || token["rstrip"]?.GetValue<bool>() == true || token["single_word"]?.GetValue<bool>() == true)
                throw Unsupported(path, $"added token {content} with lstrip/rstrip/single_word");
            _added[content] = token["id"]!.GetValue<int>();
            _tokens[token["id"]!.GetValue<int>()] = content;
        }
        _addedByFirstChar = _added.Keys.GroupBy(k => k[0])
            .ToDictionary(g => g.Key, g => g.OrderByDescending(k => k.Length).ToArray());

        var merges = (model["merges"] as JsonArray ?? []).Select(m => m switch
        {
            JsonArray { Count: 2 } pair => pair[0]!.GetValue<string>() + " " + pair[1]!.GetValue<string>(), // tokenizers >= 0.20
            JsonValue v => v.GetValue<string>(),
            _ => throw Unsupported(path, $"merge {m?.ToJsonString()}"),
        }).ToList();
        _bpe = BpeTokenizer.Create(new BpeOptions(_vocab) { Merges = merges, ByteLevel = true, PreTokenizer = null, Normalizer = null });
    }

    public int[] Encode(string text)
    {
        var ids = new List<int>();
        int start = 0;
        for (int i = 0; i < text.Length;)
        {
            if (AddedAt(text, i) is { } added)
            {
                EncodeText(text[start..i], ids);
                ids.Add(_added[added]);
                i += added.Length;
                start = i;
            }
            else i++;
        }
        EncodeText(text[start..], ids);
        return [.. ids];
    }

    /// <summary>The ByteLevel decoder: each token's characters back to bytes (GPT-2's table; other characters as UTF-8), then UTF-8.</summary>
    public string Decode(IEnumerable<int> ids)
    {
        var bytes = new List<byte>();
        foreach (int id in ids)
            if (_tokens.TryGetValue(id, out string? token)) ByteLevel.Unmap(token, bytes);
        return Encoding.UTF8.GetString(bytes.ToArray()); // invalid sequences become U+FFFD, as HF's from_utf8_lossy
    }

    private string? AddedAt(string text, int i)
    {
        if (!_addedByFirstChar.TryGetValue(text[i], out var candidates)) return null;
        foreach (string candidate in candidates)
            if (string.CompareOrdinal(text, i, candidate, 0, candidate.Length) == 0) return candidate;
        return null;
    }

    private void EncodeText(string text, List<int> ids)
    {
        if (text.Length == 0) return;
        if (_nfc) text = text.Normalize(NormalizationForm.FormC);
        IEnumerable<string> pieces = [text];
        foreach (var split in _splits) pieces = pieces.SelectMany(p => Isolate(split, p));
        foreach (string piece in pieces)
        {
            if (_ignoreMerges && _vocab.TryGetValue(ByteLevel.Map(piece), out int whole)) { ids.Add(whole); continue; }
            ids.AddRange(_bpe.EncodeToIds(piece, considerPreTokenization: false, considerNormalization: false));
        }
    }

    /// <summary>Split with behavior Isolated: every match a piece, and the text between matches too.</summary>
    private static IEnumerable<string> Isolate(Regex regex, string text)
    {
        int at = 0;
        foreach (var (index, length) in SurrogateSafe.Matches(regex, text))
        {
            if (length == 0) continue;
            if (index > at) yield return text[at..index];
            yield return text.Substring(index, length);
            at = index + length;
        }
        if (at < text.Length) yield return text[at..];
    }

    /// <summary>The regexes to apply in order: Split (Isolated, not inverted) and/or ByteLevel's own when use_regex.</summary>
    private static Regex[] PreTokenizerRegexes(JsonObject? pre, string path)
    {
        var steps = pre?["type"]?.GetValue<string>() == "Sequence"
            ? (pre["pretokenizers"] as JsonArray ?? []).OfType<JsonObject>().ToList()
            : pre is null ? [] : [pre];
        var regexes = new List<Regex>();
        bool byteLevel = false;
        foreach (var step in steps)
        {
            switch (step["type"]?.GetValue<string>())
            {
                case "Split" when step["behavior"]?.GetValue<string>() == "Isolated" && step["invert"]?.GetValue<bool>() != true &&
                                  SplitPattern(step) is { } pattern:
                    regexes.Add(new Regex(pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant));
                    break;
                case "ByteLevel" when step["add_prefix_space"]?.GetValue<bool>() != true:
                    byteLevel = true;
                    if (step["use_regex"]?.GetValue<bool>() ?? true) regexes.Add(new Regex(Gpt2Pattern, RegexOptions.Compiled | RegexOptions.CultureInvariant));
                    break;
                default:
                    throw Unsupported(path, $"pre-tokenizer {step.ToJsonString()}");
            }
        }
        if (!byteLevel) throw Unsupported(path, "a pre-tokenizer without ByteLevel");
        return [.. regexes];
    }

    private static string? SplitPattern(JsonObject step) =>
        step["pattern"] is JsonObject pattern && pattern["Regex"] is JsonValue regex ? regex.GetValue<string>() : null;

    private static TokenizerLoadException Unsupported(string path, string what) => new(
        $"{path} uses {what}, which the managed tokenizer (used where the native HF tokenizers library is not available: " +
        "it ships for linux-x64 only) does not run. Byte-level BPE tokenizers (Qwen2/2.5/3, Llama 3) are supported.");

    /// <summary>GPT-2's bytes_to_unicode: printable bytes stand for themselves, the rest are shifted to U+0100 and up.</summary>
    internal static class ByteLevel
    {
        public static readonly char[] ByteToChar = BuildTable();
        public static readonly int[] CharToByte = BuildReverse();

        /// <summary>A byte-level token's bytes: each character of GPT-2's table is its byte; any other character its UTF-8.</summary>
        public static byte[] Unmap(string token)
        {
            var bytes = new List<byte>(token.Length);
            Unmap(token, bytes);
            return [.. bytes];
        }

        public static void Unmap(string token, List<byte> bytes)
        {
            Span<byte> utf8 = stackalloc byte[4];
            foreach (Rune rune in token.EnumerateRunes())
            {
                if (rune.Value < CharToByte.Length && CharToByte[rune.Value] is >= 0 and var b) bytes.Add((byte)b);
                else foreach (byte u in utf8[..rune.EncodeToUtf8(utf8)]) bytes.Add(u);
            }
        }

        public static string Map(string text)
        {
            byte[] bytes = Encoding.UTF8.GetBytes(text);
            var chars = new char[bytes.Length];
            for (int i = 0; i < bytes.Length; i++) chars[i] = ByteToChar[bytes[i]];
            return new string(chars);
        }

        private static char[] BuildTable()
        {
            var table = new char[256];
            int next = 0;
            for (int b = 0; b < 256; b++)
            {
                bool printable = b is >= '!' and <= '~' or >= 0xA1 and <= 0xAC or >= 0xAE and <= 0xFF;
                table[b] = printable ? (char)b : (char)(256 + next++);
            }
            return table;
        }

        private static int[] BuildReverse()
        {
            var reverse = Enumerable.Repeat(-1, 512).ToArray();
            for (int b = 0; b < 256; b++) reverse[ByteToChar[b]] = b;
            return reverse;
        }
    }

    /// <summary>
    /// HF's regexes see code points; .NET's see UTF-16 units, so a class such as [^\r\n\p{L}\p{N}]? would take half of an
    /// emoji. The text is matched in a copy where each code point above U+FFFF is one BMP stand-in of the same kind
    /// (letter, number, or other), and the matches are mapped back to the original positions.
    /// </summary>
    private static class SurrogateSafe
    {
        private const char Letter = 'ª';   // U+00AA, Lo
        private const char Number = '²';   // U+00B2, No
        private const char Other = '\uE000'; // private use: neither letter, number nor space

        public static IEnumerable<(int Index, int Length)> Matches(Regex regex, string text)
        {
            if (!text.Any(char.IsSurrogate))
            {
                foreach (Match m in regex.Matches(text)) yield return (m.Index, m.Length);
                yield break;
            }
            var mapped = new StringBuilder(text.Length);
            var origin = new List<int>(text.Length + 1); // mapped index → original index
            for (int i = 0; i < text.Length; i++)
            {
                origin.Add(i);
                if (char.IsHighSurrogate(text[i]) && i + 1 < text.Length && char.IsLowSurrogate(text[i + 1]))
                {
                    var category = CharUnicodeInfo.GetUnicodeCategory(char.ConvertToUtf32(text[i], text[i + 1]));
                    mapped.Append(category <= UnicodeCategory.OtherLetter ? Letter
                        : category is UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber ? Number
                        : Other);
                    i++;
                }
                else mapped.Append(text[i]);
            }
            origin.Add(text.Length);
            foreach (Match m in regex.Matches(mapped.ToString()))
                yield return (origin[m.Index], origin[m.Index + m.Length] - origin[m.Index]);
        }
    }
}
