using System.Text.Json;
using System.Text.Json.Nodes;

namespace FineTune.Engine.Tokenization;

/// <summary>An added token as HF lists it (tokenizer.json added_tokens or tokenizer_config added_tokens_decoder).</summary>
public sealed record AddedTokenInfo(int Id, string Content, bool Special);

/// <summary>
/// What tokenizer_config.json, chat_template.jinja and generation_config.json say about a tokenizer,
/// read leniently: HF writes special tokens either as strings or as AddedToken objects, and the chat
/// template either as one string or as a list of named templates.
/// </summary>
public sealed record TokenizerSettings
{
    public string? BosToken { get; init; }
    public string? EosToken { get; init; }
    public string? PadToken { get; init; }
    public string? UnkToken { get; init; }
    public bool? AddBosToken { get; init; }
    public bool? AddEosToken { get; init; }
    public string? TokenizerClass { get; init; }
    public bool CleanUpTokenizationSpaces { get; init; }
    public string? ChatTemplate { get; init; }
    public IReadOnlyList<AddedTokenInfo> AddedTokensDecoder { get; init; } = [];
    /// <summary>generation_config.json eos_token_id, as a list (it may be an int or a list there).</summary>
    public IReadOnlyList<int> GenerationEosTokenIds { get; init; } = [];
    public int? GenerationBosTokenId { get; init; }
    public int? GenerationPadTokenId { get; init; }

    public static TokenizerSettings Load(string modelFolder)
    {
        var settings = new TokenizerSettings();
        string configPath = Path.Combine(modelFolder, "tokenizer_config.json");
        if (File.Exists(configPath))
        {
            JsonObject config = ReadObject(configPath);
            var added = new List<AddedTokenInfo>();
            if (config["added_tokens_decoder"] is JsonObject decoder)
            {
                foreach (var (key, value) in decoder)
                {
                    if (!int.TryParse(key, out int id) || value is not JsonObject token) continue;
                    string? content = token["content"]?.GetValue<string>();
                    if (content is null) continue;
                    added.Add(new AddedTokenInfo(id, content, token["special"]?.GetValue<bool>() ?? false));
                }
            }
            settings = settings with
            {
                BosToken = TokenString(config["bos_token"]),
                EosToken = TokenString(config["eos_token"]),
                PadToken = TokenString(config["pad_token"]),
                UnkToken = TokenString(config["unk_token"]),
                AddBosToken = Bool(config["add_bos_token"]),
                AddEosToken = Bool(config["add_eos_token"]),
                TokenizerClass = config["tokenizer_class"] is JsonValue cls && cls.TryGetValue(out string? c) ? c : null,
                CleanUpTokenizationSpaces = Bool(config["clean_up_tokenization_spaces"]) ?? false,
                ChatTemplate = ChatTemplateFrom(config["chat_template"]),
                AddedTokensDecoder = added,
            };
        }

        // transformers ≥ 4.43 saves the template beside the config; when present it is the one HF uses.
        string jinjaPath = Path.Combine(modelFolder, "chat_template.jinja");
        if (File.Exists(jinjaPath)) settings = settings with { ChatTemplate = File.ReadAllText(jinjaPath) };

        string generationPath = Path.Combine(modelFolder, "generation_config.json");
        if (File.Exists(generationPath))
        {
            JsonObject generation = ReadObject(generationPath);
            settings = settings with
            {
                GenerationEosTokenIds = IntList(generation["eos_token_id"]),
                GenerationBosTokenId = FirstInt(generation["bos_token_id"]),
                GenerationPadTokenId = FirstInt(generation["pad_token_id"]),
            };
        }
        return settings;
    }

    internal static JsonObject ReadObject(string path)
    {
        try
        {
            using var stream = File.OpenRead(path);
            return JsonNode.Parse(stream, documentOptions: new JsonDocumentOptions { AllowTrailingCommas = true }) as JsonObject
                ?? throw new TokenizerLoadException($"{path} does not hold a JSON object. Download the model files again.");
        }
        catch (JsonException e)
        {
            throw new TokenizerLoadException($"{path} is not valid JSON ({e.Message}). Download the model files again.", e);
        }
    }

    /// <summary>"&lt;s&gt;" or {"content": "&lt;s&gt;", ...} → "&lt;s&gt;"; null stays null.</summary>
    internal static string? TokenString(JsonNode? node) => node switch
    {
        JsonValue v when v.TryGetValue(out string? s) => s,
        JsonObject o => o["content"]?.GetValue<string>(),
        _ => null,
    };

    private static bool? Bool(JsonNode? node) => node is JsonValue v && v.TryGetValue(out bool b) ? b : null;

    private static IReadOnlyList<int> IntList(JsonNode? node) => node switch
    {
        JsonValue v when v.TryGetValue(out int i) => [i],
        JsonArray a => a.OfType<JsonValue>().Select(x => x.TryGetValue(out int i) ? (int?)i : null).OfType<int>().ToList(),
        _ => [],
    };

    private static int? FirstInt(JsonNode? node) => IntList(node) is [var first, ..] ? first : null;

    /// <summary>A string template, or from a list of {name, template} the one named "default" (HF's choice).</summary>
    private static string? ChatTemplateFrom(JsonNode? node)
    {
        if (node is JsonValue v && v.TryGetValue(out string? s)) return s;
        if (node is not JsonArray list) return null;
        var named = list.OfType<JsonObject>()
            .Select(o => (Name: o["name"]?.GetValue<string>(), Template: o["template"]?.GetValue<string>()))
            .Where(t => t.Template is not null)
            .ToList();
        return named.FirstOrDefault(t => t.Name == "default").Template ?? named.FirstOrDefault().Template;
    }
}

/// <summary>The tokenizer files are missing, unreadable or of a kind we do not support.</summary>
public sealed class TokenizerLoadException : Exception
{
    public TokenizerLoadException(string message) : base(message) { }
    public TokenizerLoadException(string message, Exception inner) : base(message, inner) { }
}
