using System.Globalization;
using System.Text.Json;

namespace FineTune.Engine.Models;

/// <summary>
/// Rotary position embedding settings: HF's rope_parameters (transformers 5) or rope_theta + rope_scaling (Hub today).
/// Type is "default", "linear" or "llama3"; the scaling fields are only read for the types that use them.
/// </summary>
public sealed record RopeSettings(
    double Theta,
    string Type = "default",
    double Factor = 1.0,
    double LowFreqFactor = 1.0,
    double HighFreqFactor = 4.0,
    int? OriginalMaxPositionEmbeddings = null)
{
    public static readonly IReadOnlyList<string> SupportedTypes = ["default", "linear", "llama3"];
}

/// <summary>
/// The architecture settings of a Hugging Face model folder (config.json), in one shape for every family we run.
/// Reads both file styles: the Hub's (rope_theta at the top, rope_scaling, torch_dtype) and transformers 5's
/// (rope_parameters, dtype), plus Qwen (v1)'s own names (kv_channels, rotary_emb_base, layer_norm_epsilon, ...).
/// </summary>
public sealed class ModelConfig
{
    /// <summary>The model_type values FineTune runs (<see cref="ModelFamilies"/>).</summary>
    public static IReadOnlyList<string> SupportedModelTypes => ModelFamilies.SupportedModelTypes;

    /// <summary>The registry entry of this config's model_type.</summary>
    public ModelFamily Family => ModelFamilies.Get(ModelType);

    public required string ModelType { get; init; }
    public required int HiddenSize { get; init; }

    /// <summary>Width of the SwiGLU MLP (for Qwen v1 this is half of its config's intermediate_size).</summary>
    public required int IntermediateSize { get; init; }

    public required int NumHiddenLayers { get; init; }
    public required int NumAttentionHeads { get; init; }
    public required int NumKeyValueHeads { get; init; }
    public required int HeadDim { get; init; }
    public required double RmsNormEps { get; init; }
    public required int VocabSize { get; init; }
    public int MaxPositionEmbeddings { get; init; } = 2048;
    public bool TieWordEmbeddings { get; init; }

    /// <summary>Bias on q/k/v/o (llama's attention_bias). Qwen2 always has q/k/v bias; that is in its architecture.</summary>
    public bool AttentionBias { get; init; }

    public bool MlpBias { get; init; }

    /// <summary>Sliding-window attention span, for the layers marked in <see cref="SlidingLayers"/>.</summary>
    public int? SlidingWindow { get; init; }

    /// <summary>Per layer: true where the layer attends only to the last <see cref="SlidingWindow"/> positions.</summary>
    public IReadOnlyList<bool> SlidingLayers { get; init; } = [];

    public required RopeSettings Rope { get; init; }
    public IReadOnlyList<int> EosTokenIds { get; init; } = [];
    public int? BosTokenId { get; init; }
    public int? PadTokenId { get; init; }

    /// <summary>The checkpoint's stored dtype ("bfloat16", "float32", ...), when config.json says.</summary>
    public string? StoredDType { get; init; }

    public bool IsSlidingLayer(int layer) => SlidingWindow is not null && layer < SlidingLayers.Count && SlidingLayers[layer];

    /// <summary>Reads FOLDER/config.json.</summary>
    public static ModelConfig Load(string folder)
    {
        string path = Path.Combine(folder, "config.json");
        if (!File.Exists(path))
            throw new ModelFormatException($"'{folder}' has no config.json. Point to a Hugging Face model folder (config.json + *.safetensors).");
        return Parse(File.ReadAllText(path), path);
    }

    /// <summary>Parses the text of a config.json; <paramref name="source"/> names it in errors.</summary>
    public static ModelConfig Parse(string json, string source = "config.json")
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(json, new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
        }
        catch (JsonException e)
        {
            throw new ModelFormatException($"{source} is not valid JSON: {e.Message}", e);
        }
        using (document)
        {
            var reader = new ConfigReader(document.RootElement, source);
            string modelType = reader.String("model_type")
                ?? throw new ModelFormatException($"{source} has no model_type; it is not a transformers model config.");
            return ModelFamilies.Get(modelType, source).Config switch
            {
                ConfigStyle.QwenV1 => ParseQwenV1(reader),
                _ => ParseLlamaStyle(reader, modelType),
            };
        }
    }

    private static ModelConfig ParseLlamaStyle(ConfigReader r, string modelType)
    {
        CheckActivation(r, "hidden_act");
        int hidden = r.RequiredInt("hidden_size");
        int heads = r.RequiredInt("num_attention_heads");
        int layers = r.RequiredInt("num_hidden_layers");
        int? window = r.Int("sliding_window");
        return new ModelConfig
        {
            ModelType = modelType,
            HiddenSize = hidden,
            IntermediateSize = r.RequiredInt("intermediate_size"),
            NumHiddenLayers = layers,
            NumAttentionHeads = heads,
            NumKeyValueHeads = r.Int("num_key_value_heads") ?? heads,
            HeadDim = r.Int("head_dim") ?? HeadDimOf(hidden, heads, r.Source),
            RmsNormEps = r.Double("rms_norm_eps") ?? 1e-6,
            VocabSize = r.RequiredInt("vocab_size"),
            MaxPositionEmbeddings = r.Int("max_position_embeddings") ?? 2048,
            TieWordEmbeddings = r.Bool("tie_word_embeddings") ?? false,
            AttentionBias = r.Bool("attention_bias") ?? false,
            MlpBias = r.Bool("mlp_bias") ?? false,
            SlidingWindow = window,
            SlidingLayers = SlidingLayersOf(r, modelType, layers, window),
            Rope = ReadRope(r, defaultTheta: 10000.0),
            EosTokenIds = r.IntOrList("eos_token_id"),
            BosTokenId = r.Int("bos_token_id"),
            PadTokenId = r.Int("pad_token_id"),
            StoredDType = r.String("dtype") ?? r.String("torch_dtype"),
        };
    }

    /// <summary>Qwen (v1), e.g. Qwen-7B-Chat: its own config names; the MLP width is intermediate_size / 2.</summary>
    private static ModelConfig ParseQwenV1(ConfigReader r)
    {
        int hidden = r.RequiredInt("hidden_size");
        int heads = r.RequiredInt("num_attention_heads");
        double rotaryPct = r.Double("rotary_pct") ?? 1.0;
        if (rotaryPct != 1.0)
            throw new UnsupportedModelException($"{r.Source}: rotary_pct {rotaryPct} (partial rotary embedding) is not supported; only 1.0 is.");
        int intermediate = r.RequiredInt("intermediate_size");
        if (intermediate % 2 != 0)
            throw new ModelFormatException($"{r.Source}: Qwen's intermediate_size {intermediate} should be even (it is twice the MLP width).");
        int seqLength = r.Int("seq_length") ?? r.Int("max_position_embeddings") ?? 2048;
        return new ModelConfig
        {
            ModelType = "qwen",
            HiddenSize = hidden,
            IntermediateSize = intermediate / 2,
            NumHiddenLayers = r.RequiredInt("num_hidden_layers"),
            NumAttentionHeads = heads,
            NumKeyValueHeads = heads,
            HeadDim = r.Int("kv_channels") ?? HeadDimOf(hidden, heads, r.Source),
            RmsNormEps = r.Double("layer_norm_epsilon") ?? 1e-6,
            VocabSize = r.RequiredInt("vocab_size"),
            MaxPositionEmbeddings = seqLength,
            TieWordEmbeddings = r.Bool("tie_word_embeddings") ?? false,
            AttentionBias = true,
            MlpBias = !(r.Bool("no_bias") ?? true),
            Rope = new RopeSettings(r.Double("rotary_emb_base") ?? 10000.0),
            EosTokenIds = r.IntOrList("eos_token_id"),
            BosTokenId = r.Int("bos_token_id"),
            PadTokenId = r.Int("pad_token_id"),
            StoredDType = r.String("torch_dtype"),
        };
    }

    private static RopeSettings ReadRope(ConfigReader r, double defaultTheta)
    {
        // transformers 5: everything in rope_parameters. Hub today: rope_theta at the top, rope_scaling beside it.
        ConfigReader? parameters = r.Object("rope_parameters");
        ConfigReader? scaling = parameters ?? r.Object("rope_scaling");
        double theta = parameters?.Double("rope_theta") ?? r.Double("rope_theta") ?? defaultTheta;
        if (scaling is null) return new RopeSettings(theta);

        string type = scaling.String("rope_type") ?? scaling.String("type") ?? "default";
        if (!RopeSettings.SupportedTypes.Contains(type))
            throw new UnsupportedModelException(
                $"{r.Source}: rope type '{type}' is not supported. Supported rope types: {string.Join(", ", RopeSettings.SupportedTypes)}.");
        var rope = new RopeSettings(
            theta,
            type,
            Factor: scaling.Double("factor") ?? 1.0,
            LowFreqFactor: scaling.Double("low_freq_factor") ?? 1.0,
            HighFreqFactor: scaling.Double("high_freq_factor") ?? 4.0,
            OriginalMaxPositionEmbeddings: scaling.Int("original_max_position_embeddings"));
        if (type == "llama3" && rope.OriginalMaxPositionEmbeddings is null)
            throw new ModelFormatException($"{r.Source}: llama3 rope scaling needs original_max_position_embeddings.");
        return rope;
    }

    private static IReadOnlyList<bool> SlidingLayersOf(ConfigReader r, string modelType, int layers, int? window)
    {
        if (window is null) return new bool[layers];
        IReadOnlyList<string>? types = r.StringList("layer_types");
        if (types is not null)
        {
            if (types.Count != layers)
                throw new ModelFormatException($"{r.Source}: layer_types has {types.Count} entries for {layers} layers.");
            return types.Select(t => t == "sliding_attention").ToArray();
        }
        if (modelType is "qwen2" or "qwen3")
        {
            // HF Qwen2/Qwen3: sliding only with use_sliding_window, and only from layer max_window_layers on.
            bool use = r.Bool("use_sliding_window") ?? false;
            int from = r.Int("max_window_layers") ?? layers;
            return Enumerable.Range(0, layers).Select(i => use && i >= from).ToArray();
        }
        return Enumerable.Repeat(modelType == "mistral", layers).ToArray();
    }

    private static void CheckActivation(ConfigReader r, string key)
    {
        string? act = r.String(key);
        if (act is not null && act != "silu")
            throw new UnsupportedModelException($"{r.Source}: {key} '{act}' is not supported; these architectures use silu.");
    }

    private static int HeadDimOf(int hidden, int heads, string source)
    {
        if (heads <= 0 || hidden % heads != 0)
            throw new ModelFormatException($"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}.");
        return hidden / heads;
    }

    /// <summary>Typed access to a JSON object where absent and null mean the same.</summary>
    private sealed class ConfigReader(JsonElement element, string source)
    {
        public string Source => source;

        private JsonElement? Get(string key) =>
            element.TryGetProperty(key, out var value) && value.ValueKind != JsonValueKind.Null ? value : null;

        public string? String(string key) => Get(key) is { ValueKind: JsonValueKind.String } v ? v.GetString() : null;

        public int? Int(string key)
        {
            if (Get(key) is not { } v) return null;
            if (v.ValueKind == JsonValueKind.Number && v.TryGetInt32(out int i)) return i;
            if (v.ValueKind == JsonValueKind.Number && v.TryGetDouble(out double d) && d == Math.Floor(d) && Math.Abs(d) <= int.MaxValue) return (int)d;
            throw Bad(key, v, "an integer");
        }

        /// <summary>
        /// A dimension of the model: present, at least 1 and at most a bound no real model reaches. A value that makes no
        /// model (0 heads, hidden_size 1e9) is refused here, naming the field, before anything is built or estimated
        /// (before: a divide by zero or an overflow ended the wizard's circuit, and oversized configs allocated gigabytes).
        /// </summary>
        public int RequiredInt(string key)
        {
            int value = Int(key) ?? throw new ModelFormatException($"{source} has no {key}; it is needed to build the model.");
            int limit = key switch
            {
                "vocab_size" => 4 << 20,
                "intermediate_size" => 1 << 20,
                "num_hidden_layers" or "num_attention_heads" or "num_key_value_heads" or "head_dim" => 4096,
                _ => 1 << 17,
            };
            if (value < 1 || value > limit)
                throw new ModelFormatException($"{source}: {key} is {value}; it must be a whole number from 1 to {limit:N0}.");
            return value;
        }

        public double? Double(string key)
        {
            if (Get(key) is not { } v) return null;
            if (v.ValueKind == JsonValueKind.Number) return v.GetDouble();
            if (v.ValueKind == JsonValueKind.String && double.TryParse(v.GetString(), NumberStyles.Float, CultureInfo.InvariantCulture, out double d)) return d;
            throw Bad(key, v, "a number");
        }

        public bool? Bool(string key)
        {
            if (Get(key) is not { } v) return null;
            return v.ValueKind switch
            {
                JsonValueKind.True => true,
                JsonValueKind.False => false,
                _ => throw Bad(key, v, "true or false"),
            };
        }

        public ConfigReader? Object(string key) =>
            Get(key) is { ValueKind: JsonValueKind.Object } v ? new ConfigReader(v, $"{source} {key}") : null;

        public IReadOnlyList<string>? StringList(string key) =>
            Get(key) is { ValueKind: JsonValueKind.Array } v ? v.EnumerateArray().Select(e => e.GetString() ?? "").ToArray() : null;

        /// <summary>eos_token_id style: an int, a list of ints, or absent.</summary>
        public IReadOnlyList<int> IntOrList(string key)
        {
            if (Get(key) is not { } v) return [];
            if (v.ValueKind == JsonValueKind.Number) return [Int(key)!.Value];
            if (v.ValueKind == JsonValueKind.Array && v.EnumerateArray().All(e => e.ValueKind == JsonValueKind.Number && e.TryGetInt32(out _)))
                return v.EnumerateArray().Select(e => e.GetInt32()).ToArray();
            throw Bad(key, v, "an integer or a list of integers");
        }

        private ModelFormatException Bad(string key, JsonElement value, string expected) =>
            new($"{source}: {key} is {value.GetRawText()}, expected {expected}.");
    }
}
