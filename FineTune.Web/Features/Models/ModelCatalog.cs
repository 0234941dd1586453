using System.Text.Json;
using FineTune.Engine.Models;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.Models;

/// <summary>The shape numbers memory and time estimates need (from config.json).</summary>
/// <param name="HeadDimension">Width of one attention head when config.json states it (Qwen3: wider than hidden/heads); 0 = hidden/heads.</param>
/// <param name="QueryKeyNorm">Qwen3's per-head RMSNorm on q and k.</param>
public sealed record ModelShape(
    int HiddenSize, int Layers, int IntermediateSize, int VocabSize, int Heads, int KeyValueHeads, bool TiedEmbeddings,
    int HeadDimension = 0, bool QueryKeyNorm = false)
{
    private int HeadDim => HeadDimension > 0 ? HeadDimension : HiddenSize / Heads;

    /// <summary>Parameters of all linear projections inside the decoder layers (what NF4 quantizes).</summary>
    public long LinearParameters
    {
        get
        {
            long h = HiddenSize, q = (long)Heads * HeadDim, kv = (long)KeyValueHeads * HeadDim;
            long attention = h * q * 2 + h * kv * 2; // q, o + k, v
            long mlp = 3L * h * IntermediateSize;     // gate, up, down
            return (attention + mlp) * Layers;
        }
    }

    /// <summary>Embeddings and LM head: kept in 16-bit even when the rest is 4-bit.</summary>
    public long EmbeddingParameters => (long)VocabSize * HiddenSize * (TiedEmbeddings ? 1 : 2);

    /// <summary>All weights (biases aside: a few thousand per layer).</summary>
    public long TotalParameters => LinearParameters + EmbeddingParameters + (long)Layers * (HiddenSize * 2 + (QueryKeyNorm ? HeadDim * 2 : 0)) + HiddenSize;

    /// <summary>LoRA parameters for rank r on the attention projections q/k/v/o (the tutorial's targets).</summary>
    public long LoraParameters(int r, IReadOnlyCollection<string> targets)
    {
        long h = HiddenSize, kv = (long)KeyValueHeads * HeadDim, i = IntermediateSize, total = 0;
        foreach (string t in targets)
        {
            total += t switch
            {
                "q_proj" or "o_proj" => r * (h + (long)Heads * HeadDim),
                "attn.c_proj" => r * (h + h),
                "k_proj" or "v_proj" => r * (h + kv),
                "c_attn" => r * (h + 3 * h),
                "gate_proj" or "up_proj" => r * (h + i),
                "down_proj" => r * (i + h),
                _ => r * (h + h),
            };
        }
        return total * Layers;
    }

    /// <summary>Reads the fields of an HF config.json (Qwen2/Qwen3/Llama/Mistral; Qwen v1 names too).</summary>
    public static ModelShape FromConfigJson(string json)
    {
        using var document = JsonDocument.Parse(json);
        var root = document.RootElement;
        int Int(params string[] names)
        {
            foreach (string name in names)
                if (root.TryGetProperty(name, out var value) && value.ValueKind == JsonValueKind.Number)
                    return value.GetInt32();
            throw new InvalidDataException($"config.json has none of {string.Join(", ", names)}; is this a decoder-only language model?");
        }
        int hidden = Int("hidden_size", "n_embd");
        int heads = Int("num_attention_heads", "n_head");
        int kvHeads = root.TryGetProperty("num_key_value_heads", out var kv) && kv.ValueKind == JsonValueKind.Number ? kv.GetInt32() : heads;
        int intermediate = Int("intermediate_size", "ffn_hidden_size");
        // Qwen v1 states intermediate_size as twice the width of each MLP half.
        if (root.TryGetProperty("model_type", out var type) && type.GetString() == "qwen") intermediate /= 2;
        bool tied = root.TryGetProperty("tie_word_embeddings", out var tie) && tie.ValueKind == JsonValueKind.True;
        int headDim = root.TryGetProperty("head_dim", out var hd) && hd.ValueKind == JsonValueKind.Number ? hd.GetInt32() : 0;
        bool qkNorm = root.TryGetProperty("model_type", out var mt) && mt.GetString() == "qwen3";
        return new ModelShape(hidden, Int("num_hidden_layers", "n_layer"), intermediate, Int("vocab_size", "padded_vocab_size"), heads, kvHeads, tied, headDim, qkNorm);
    }
}

/// <summary>A model offered in the model step.</summary>
/// <param name="Id">Hub id, used as the run's model.</param>
/// <param name="DisplayName">Shown as is (model names are not translated).</param>
/// <param name="ModelType">Its config.json model_type: the engine's family registry says what LoRA adapts in it.</param>
/// <param name="NoteKey">Resource key of a one-line note.</param>
public sealed record ModelPreset(string Id, string DisplayName, string ModelType, ModelShape Shape, string NoteKey, bool Gated = false)
{
    public ModelFamily Family => ModelFamilies.Get(ModelType);

    /// <summary>The projections LoRA adapts by default in this family (q/k/v/o; Qwen v1 fuses q/k/v in c_attn).</summary>
    public IReadOnlyList<string> TargetModules => Family.DefaultLoraTargets;
}

public static class ModelCatalog
{
    /// <summary>The tutorial's targets for Llama-style families (Qwen2): q/k/v/o.</summary>
    public static IReadOnlyList<string> AttentionTargets => ModelFamilies.Get("qwen2").DefaultLoraTargets;

    public static readonly IReadOnlyList<ModelPreset> Presets =
    [
        new("Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5 0.5B Instruct", "qwen2", new(896, 24, 4864, 151936, 14, 2, true), "Model_Note_Small"),
        new("Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5 1.5B Instruct", "qwen2", new(1536, 28, 8960, 151936, 12, 2, true), "Model_Note_Medium"),
        new("Qwen/Qwen2.5-7B-Instruct", "Qwen2.5 7B Instruct", "qwen2", new(3584, 28, 18944, 152064, 28, 4, false), "Model_Note_Large"),
        new("Qwen/Qwen-7B", "Qwen-7B (tutorial)", "qwen", new(4096, 32, 11008, 151936, 32, 32, false), "Model_Note_Tutorial"),
        new("meta-llama/Llama-3.1-8B-Instruct", "Llama 3.1 8B Instruct", "llama", new(4096, 32, 14336, 128256, 32, 8, false), "Model_Note_Llama", Gated: true),
    ];

    public static ModelPreset? Find(string id) => Presets.FirstOrDefault(p => string.Equals(p.Id, id, StringComparison.OrdinalIgnoreCase));

    /// <summary>The shape of the chosen model, when it can be known without downloading: a preset, or config.json in a local folder.</summary>
    public static ModelShape? ShapeOf(TrainingSettings settings)
    {
        if (settings.Source != ModelSource.Local)
            return Find(settings.Model)?.Shape;
        string config = Path.Combine(settings.Model, "config.json");
        if (!File.Exists(config)) return null;
        try { return ModelShape.FromConfigJson(File.ReadAllText(config)); }
        catch (Exception e) when (e is JsonException or InvalidDataException or IOException) { return null; }
    }
}
