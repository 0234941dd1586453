using System.Runtime.InteropServices;
using System.Text.Json.Nodes;
using NativeTokenizer = Tokenizers.DotNet.Tokenizer;

namespace FineTune.Engine.Tokenization;

/// <summary>
/// A tokenizer.json tokenizer (byte-level BPE of Qwen2/2.5/3, Llama 3, Mistral; any model the Rust HF
/// tokenizers library reads) run by that same library through Tokenizers.DotNet, so ids equal HF's. Where that
/// library has no native build (it ships for linux-x64 only: Windows, macOS, Linux on ARM) or FINETUNE_TOKENIZER=managed,
/// byte-level BPE tokenizers run managed instead (<see cref="ManagedByteLevelBpe"/>, the same ids, tested on every fixture).
/// Tokenizers.DotNet always applies the post-processor on encode and always skips special tokens on decode,
/// so the native tokenizer is built from a copy of tokenizer.json with no post-processor and no token marked
/// special; BOS/EOS are then added here from the post-processor (or from add_bos_token for Llama-class
/// tokenizers, as transformers does) and special tokens are skipped here on request.
/// </summary>
public sealed class TokenizerJson : ITextTokenizer, ITokenBytes, IDisposable
{
    /// <summary>Which implementation runs tokenizer.json.</summary>
    public enum Runtime { Auto, Native, Managed }

    private readonly NativeTokenizer? _native;
    private readonly ManagedByteLevelBpe? _managed;
    private readonly Lock _nativeGate = new();
    private readonly Dictionary<string, int> _tokenToId;
    private readonly Dictionary<int, string> _idToToken;
    private readonly HashSet<int> _special;
    private readonly int[] _prefix;
    private readonly int[] _suffix;
    private readonly bool _cleanUpSpaces;
    private readonly HashSet<int> _addedIds;
    private readonly bool _byteLevel;

    public TokenizerJson(string tokenizerJsonPath, TokenizerSettings? settings = null, Runtime runtime = Runtime.Auto)
    {
        settings ??= new TokenizerSettings();
        if (!File.Exists(tokenizerJsonPath))
            throw new TokenizerLoadException($"tokenizer.json was not found at {tokenizerJsonPath}. Download the model's tokenizer files.");
        JsonObject root = TokenizerSettings.ReadObject(tokenizerJsonPath);

        _tokenToId = ReadVocabulary(root["model"] as JsonObject, tokenizerJsonPath);
        var added = ReadAddedTokens(root);
        foreach (var token in added) _tokenToId[token.Content] = token.Id;
        _idToToken = new Dictionary<int, string>(_tokenToId.Count);
        foreach (var (token, id) in _tokenToId) _idToToken.TryAdd(id, token);
        foreach (var token in added) _idToToken[token.Id] = token.Content;

        _special = added.Where(t => t.Special).Select(t => t.Id)
            .Concat(settings.AddedTokensDecoder.Where(t => t.Special).Select(t => t.Id))
            .ToHashSet();
        VocabSize = _idToToken.Count == 0 ? 0 : _idToToken.Keys.Max() + 1;
        _addedIds = added.Select(t => t.Id).ToHashSet();
        _byteLevel = root["decoder"] is JsonObject { } decoder && decoder["type"]?.GetValue<string>() == "ByteLevel";

        Settings = settings;
        BosToken = settings.BosToken;
        EosToken = settings.EosToken;
        BosTokenId = Id(settings.BosToken) ?? settings.GenerationBosTokenId;
        EosTokenId = Id(settings.EosToken) ?? (settings.GenerationEosTokenIds is [var e, ..] ? e : null);
        PadTokenId = Id(settings.PadToken) ?? settings.GenerationPadTokenId;
        EosTokenIds = new[] { EosTokenId }.OfType<int>().Concat(settings.GenerationEosTokenIds).Distinct().ToList();
        ChatTemplate = settings.ChatTemplate;
        _cleanUpSpaces = settings.CleanUpTokenizationSpaces;
        (_prefix, _suffix) = SpecialTokenFrame(root["post_processor"], settings);

        if (runtime == Runtime.Auto) runtime = DefaultRuntime;
        if (runtime == Runtime.Managed) _managed = new ManagedByteLevelBpe(root, tokenizerJsonPath);
        else _native = CreateNative(root, tokenizerJsonPath);
    }

    /// <summary>Native where Tokenizers.DotNet ships its library (linux-x64), unless FINETUNE_TOKENIZER says managed or native.</summary>
    public static Runtime DefaultRuntime =>
        Environment.GetEnvironmentVariable("FINETUNE_TOKENIZER")?.ToLowerInvariant() switch
        {
            "managed" => Runtime.Managed,
            "native" => Runtime.Native,
            _ => OperatingSystem.IsLinux() && RuntimeInformation.ProcessArchitecture == Architecture.X64 ? Runtime.Native : Runtime.Managed,
        };

    /// <summary>True when this tokenizer runs managed (<see cref="ManagedByteLevelBpe"/>), false when through the Rust library.</summary>
    public bool IsManaged => _managed is not null;

    public TokenizerSettings Settings { get; }
    public int VocabSize { get; }
    public int? EosTokenId { get; }
    public int? PadTokenId { get; }
    public int? BosTokenId { get; }
    public IReadOnlyList<int> EosTokenIds { get; }
    public IReadOnlySet<int> SpecialTokenIds => _special;
    public string? ChatTemplate { get; }
    public string? BosToken { get; }
    public string? EosToken { get; }

    /// <summary>The ids put before and after the text when special tokens are added (e.g. Llama 3's BOS).</summary>
    public IReadOnlyList<int> PrefixIds => _prefix;
    public IReadOnlyList<int> SuffixIds => _suffix;

    public IReadOnlyList<int> Encode(string text) => Encode(text, addSpecialTokens: true);

    public IReadOnlyList<int> Encode(string text, bool addSpecialTokens)
    {
        ArgumentNullException.ThrowIfNull(text);
        var ids = new List<int>(text.Length + _prefix.Length + _suffix.Length);
        if (addSpecialTokens) ids.AddRange(_prefix);
        if (_managed is not null) ids.AddRange(_managed.Encode(text));
        else if (text.Length > 0)
        {
            uint[] raw;
            lock (_nativeGate) raw = _native!.Encode(text);
            foreach (uint id in raw) ids.Add(checked((int)id));
        }
        if (addSpecialTokens) ids.AddRange(_suffix);
        return ids;
    }

    public string Decode(IEnumerable<int> ids, bool skipSpecialTokens = false)
    {
        var kept = new List<uint>();
        foreach (int id in ids)
        {
            // Models pad their embedding past the tokenizer (Qwen: 151936 rows, 151665 tokens); HF drops such ids.
            if (id < 0 || !_idToToken.ContainsKey(id)) continue;
            if (skipSpecialTokens && _special.Contains(id)) continue;
            kept.Add((uint)id);
        }
        if (kept.Count == 0) return "";
        string text;
        if (_managed is not null) text = _managed.Decode(kept.Select(id => (int)id));
        else lock (_nativeGate) text = _native!.Decode([.. kept]);
        return _cleanUpSpaces ? CleanUpTokenization(text) : text;
    }

    public int? TokenToId(string token) => _tokenToId.TryGetValue(token, out int id) ? id : null;

    /// <summary>
    /// Added tokens: their text in UTF-8. Byte-level vocabularies (ByteLevel decoder): each character back to its byte
    /// (GPT-2's table). Others (SentencePiece-style pieces): null, their bytes are not the text's.
    /// </summary>
    public byte[]? TokenBytes(int id)
    {
        if (!_idToToken.TryGetValue(id, out string? token)) return null;
        if (_addedIds.Contains(id)) return System.Text.Encoding.UTF8.GetBytes(token);
        return _byteLevel ? ManagedByteLevelBpe.ByteLevel.Unmap(token) : null;
    }

    public string? IdToToken(int id) => _idToToken.GetValueOrDefault(id);

    public void Dispose() => _native?.Dispose();

    private int? Id(string? token) => token is null ? null : TokenToId(token);

    /// <summary>transformers' clean_up_tokenization, applied when tokenizer_config asks for it (Llama 3 does).</summary>
    internal static string CleanUpTokenization(string text) => text
        .Replace(" .", ".").Replace(" ?", "?").Replace(" !", "!").Replace(" ,", ",")
        .Replace(" ' ", "'").Replace(" n't", "n't").Replace(" 'm", "'m").Replace(" 's", "'s")
        .Replace(" 've", "'ve").Replace(" 're", "'re");

    private static Dictionary<string, int> ReadVocabulary(JsonObject? model, string path)
    {
        var vocab = new Dictionary<string, int>(StringComparer.Ordinal);
        switch (model?["vocab"])
        {
            case JsonObject map: // BPE, WordPiece, WordLevel
                foreach (var (token, id) in map)
                    if (id is not null) vocab[token] = id.GetValue<int>();
                break;
            case JsonArray pieces: // Unigram: [[piece, score], ...], the id is the position
                for (int i = 0; i < pieces.Count; i++)
                    if (pieces[i] is JsonArray { Count: > 0 } pair && pair[0] is JsonValue v && v.TryGetValue(out string? piece))
                        vocab.TryAdd(piece, i);
                break;
            default:
                throw new TokenizerLoadException($"{path} has no model vocabulary (model.vocab). It may be damaged: download the model files again.");
        }
        return vocab;
    }

    private static List<AddedTokenInfo> ReadAddedTokens(JsonObject root) =>
        (root["added_tokens"] as JsonArray ?? [])
        .OfType<JsonObject>()
        .Where(t => t["id"] is not null && t["content"] is not null)
        .Select(t => new AddedTokenInfo(t["id"]!.GetValue<int>(), t["content"]!.GetValue<string>(), t["special"]?.GetValue<bool>() ?? false))
        .ToList();

    /// <summary>
    /// The ids HF adds around a single sequence. Llama-class tokenizers in transformers rebuild their
    /// post-processor from add_bos_token/add_eos_token, so those flags win there; elsewhere tokenizer.json's
    /// post_processor decides (TemplateProcessing, Roberta/Bert processing, or a Sequence of them).
    /// </summary>
    private (int[] Prefix, int[] Suffix) SpecialTokenFrame(JsonNode? postProcessor, TokenizerSettings settings)
    {
        bool llamaClass = settings.TokenizerClass is "LlamaTokenizer" or "LlamaTokenizerFast" or "CodeLlamaTokenizer" or "CodeLlamaTokenizerFast";
        if (llamaClass && (settings.AddBosToken is not null || settings.AddEosToken is not null))
        {
            int[] prefix = settings.AddBosToken ?? true ? new[] { BosTokenId }.OfType<int>().ToArray() : [];
            int[] suffix = settings.AddEosToken ?? false ? new[] { EosTokenId }.OfType<int>().ToArray() : [];
            return (prefix, suffix);
        }
        var before = new List<int>();
        var after = new List<int>();
        AddFrame(postProcessor as JsonObject, before, after);
        return (before.ToArray(), after.ToArray());
    }

    private void AddFrame(JsonObject? processor, List<int> before, List<int> after)
    {
        switch (processor?["type"]?.GetValue<string>())
        {
            case "Sequence":
                foreach (var inner in processor["processors"] as JsonArray ?? [])
                    AddFrame(inner as JsonObject, before, after);
                break;
            case "TemplateProcessing":
                bool seenSequence = false;
                foreach (var piece in processor["single"] as JsonArray ?? [])
                {
                    if (piece?["Sequence"] is not null) { seenSequence = true; continue; }
                    string? name = piece?["SpecialToken"]?["id"]?.GetValue<string>();
                    if (name is null) continue;
                    var ids = (processor["special_tokens"]?[name]?["ids"] as JsonArray)?.Select(x => x!.GetValue<int>()).ToList()
                        ?? [TokenToId(name) ?? throw new TokenizerLoadException($"The post-processor names the special token '{name}', which is not in the vocabulary.")];
                    (seenSequence ? after : before).AddRange(ids);
                }
                break;
            case "RobertaProcessing" or "BertProcessing":
                if (processor["cls"] is JsonArray { Count: 2 } cls) before.Add(cls[1]!.GetValue<int>());
                if (processor["sep"] is JsonArray { Count: 2 } sep) after.Add(sep[1]!.GetValue<int>());
                break;
        }
    }

    /// <summary>
    /// Builds the Rust tokenizer from a copy of tokenizer.json without post-processor and special marks
    /// (see the class comment). The copy is deleted as soon as the native side has read it.
    /// </summary>
    private static NativeTokenizer CreateNative(JsonObject root, string path)
    {
        root["post_processor"] = null;
        foreach (var token in (root["added_tokens"] as JsonArray ?? []).OfType<JsonObject>())
            token["special"] = false;
        string copy = Path.Combine(Path.GetTempPath(), $"finetune-tokenizer-{Guid.NewGuid():N}.json");
        try
        {
            using (var stream = File.Create(copy))
            using (var writer = new System.Text.Json.Utf8JsonWriter(stream))
                root.WriteTo(writer);
            return new NativeTokenizer(copy);
        }
        catch (Tokenizers.DotNet.TokenizerException e)
        {
            throw new TokenizerLoadException($"The HF tokenizers library could not read {path}: {e.Message}. The file may come from a newer tokenizers version or be damaged.", e);
        }
        catch (DllNotFoundException e)
        {
            throw new TokenizerLoadException("The native tokenizers library (libhf_tokenizers.so from Tokenizers.DotNet.runtime) could not be loaded: " +
                e.Message + ". Set FINETUNE_TOKENIZER=managed to run byte-level BPE tokenizers without it.", e);
        }
        finally
        {
            try { File.Delete(copy); } catch (IOException) { /* a leftover temp file is harmless */ }
        }
    }
}
