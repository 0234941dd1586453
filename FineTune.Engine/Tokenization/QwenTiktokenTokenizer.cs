using System.Text;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;

namespace FineTune.Engine.Tokenization;

/// <summary>
/// The first Qwen generation's tokenizer (qwen.tiktoken, remote code QWenTokenizer): tiktoken BPE over
/// bytes with Qwen's split pattern, run by Microsoft.ML.Tokenizers' TiktokenTokenizer. Specials follow the
/// ranks: &lt;|endoftext|&gt;, &lt;|im_start|&gt;, &lt;|im_end|&gt;, then &lt;|extra_0|&gt;..&lt;|extra_204|&gt;.
/// Like QWenTokenizer: text is NFC-normalized, specials written in the text are allowed, no BOS/EOS is
/// ever added, and skip_special_tokens drops every id from &lt;|endoftext|&gt; up.
/// </summary>
public sealed class QwenTiktokenTokenizer : ITextTokenizer, ITokenBytes
{
    public const string Pattern =
        @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    public const string EndOfText = "<|endoftext|>";
    public const string ImStart = "<|im_start|>";
    public const string ImEnd = "<|im_end|>";
    public const int ExtraCount = 205;

    private readonly TiktokenTokenizer _tiktoken;
    private readonly byte[][] _bytesById;
    private readonly Dictionary<string, int> _specials;
    private readonly Dictionary<int, string> _specialById;
    private readonly int _endOfTextId;

    public QwenTiktokenTokenizer(string tiktokenPath, TokenizerSettings? settings = null)
    {
        settings ??= new TokenizerSettings();
        if (!File.Exists(tiktokenPath))
            throw new TokenizerLoadException($"qwen.tiktoken was not found at {tiktokenPath}. Download the model's tokenizer files.");
        _bytesById = ReadRanks(tiktokenPath);
        _endOfTextId = _bytesById.Length;
        _specials = new Dictionary<string, int>(StringComparer.Ordinal);
        string[] names = [EndOfText, ImStart, ImEnd, .. Enumerable.Range(0, ExtraCount).Select(i => $"<|extra_{i}|>")];
        for (int i = 0; i < names.Length; i++) _specials[names[i]] = _endOfTextId + i;
        _specialById = _specials.ToDictionary(p => p.Value, p => p.Key);

        var regex = new Regex(Pattern, RegexOptions.Compiled);
        using (var stream = File.OpenRead(tiktokenPath))
            _tiktoken = TiktokenTokenizer.Create(stream, new RegexPreTokenizer(regex, _specials), normalizer: null, _specials);

        VocabSize = _endOfTextId + names.Length;
        // QWenTokenizer has no BOS; generation stops at <|endoftext|> and, for chat, at <|im_end|>.
        EosToken = settings.EosToken ?? EndOfText;
        EosTokenId = TokenToId(EosToken) ?? _endOfTextId;
        PadTokenId = settings.PadToken is { } pad ? TokenToId(pad) : settings.GenerationPadTokenId;
        EosTokenIds = new[] { EosTokenId.Value }.Concat(settings.GenerationEosTokenIds).Append(_specials[ImEnd]).Distinct().ToList();
        ChatTemplate = settings.ChatTemplate;
        SpecialTokenIds = _specials.Values.ToHashSet();
    }

    public int VocabSize { get; }
    public int? EosTokenId { get; }
    public int? PadTokenId { get; }
    public int? BosTokenId => null;
    public IReadOnlyList<int> EosTokenIds { get; }
    public IReadOnlySet<int> SpecialTokenIds { get; }
    public string? ChatTemplate { get; }
    public string? BosToken => null;
    public string? EosToken { get; }

    public IReadOnlyList<int> Encode(string text) => Encode(text, addSpecialTokens: true);

    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens)
    {
        ArgumentNullException.ThrowIfNull(text);
        return text.Length == 0 ? [] : _tiktoken.EncodeToIds(text.Normalize(NormalizationForm.FormC));
    }

    /// <summary>Bytes of every token joined, then UTF-8 with replacement, as tiktoken's decode(errors="replace").</summary>
    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = false)
    {
        var bytes = new List<byte>();
        foreach (int id in ids)
        {
            if (id >= 0 && id < _bytesById.Length) { bytes.AddRange(_bytesById[id]); continue; }
            // Ids past the vocabulary (the model's padded embedding rows) have no text.
            if (!_specialById.TryGetValue(id, out string? special) || skipSpecialTokens) continue;
            bytes.AddRange(Encoding.UTF8.GetBytes(special));
        }
        return Encoding.UTF8.GetString(bytes.ToArray());
    }

    public int? TokenToId(string token)
    {
        if (_specials.TryGetValue(token, out int id)) return id;
        var ids = _tiktoken.EncodeToIds(token);
        return ids.Count == 1 && Decode(ids) == token ? ids[0] : null;
    }

    /// <summary>A rank's bytes, or a special token's text in UTF-8.</summary>
    public byte[]? TokenBytes(int id) =>
        id >= 0 && id < _bytesById.Length ? _bytesById[id]
        : _specialById.TryGetValue(id, out string? special) ? Encoding.UTF8.GetBytes(special) : null;

    public string? IdToToken(int id) =>
        _specialById.TryGetValue(id, out string? s) ? s
        : id >= 0 && id < _bytesById.Length ? Encoding.UTF8.GetString(_bytesById[id]) : null;

    /// <summary>Each line "base64 rank"; ranks must be 0..n-1 so that an id indexes its bytes.</summary>
    private static byte[][] ReadRanks(string path)
    {
        var byRank = new Dictionary<int, byte[]>();
        int lineNumber = 0;
        foreach (string line in File.ReadLines(path))
        {
            lineNumber++;
            if (line.Length == 0) continue;
            int space = line.IndexOf(' ');
            if (space <= 0 || !int.TryParse(line.AsSpan(space + 1), out int rank))
                throw new TokenizerLoadException($"{path} line {lineNumber} is not \"<base64 token> <rank>\". The file may be damaged: download it again.");
            try { byRank[rank] = Convert.FromBase64String(line[..space]); }
            catch (FormatException e) { throw new TokenizerLoadException($"{path} line {lineNumber} has a token that is not base64.", e); }
        }
        var result = new byte[byRank.Count][];
        for (int i = 0; i < result.Length; i++)
            result[i] = byRank.TryGetValue(i, out var b) ? b
                : throw new TokenizerLoadException($"{path} has no token of rank {i}; ranks must run from 0 without gaps.");
        return result;
    }
}
