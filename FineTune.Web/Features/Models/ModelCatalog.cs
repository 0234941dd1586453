using FineTune.Engine.Models;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.Models;

/// <summary>
/// The shape numbers memory and time estimates need: for a model on disk, the engine's <see cref="ModelFacts"/>
/// (exact, from the model built on the meta device); for a preset not downloaded yet, its published dimensions.
/// </summary>
/// <param name="HeadDimension">Width of one attention head when config.json states it (Qwen3: wider than hidden/heads); 0 = hidden/heads.</param>
/// <param name="QueryKeyNorm">Qwen3's per-head RMSNorm on q and k.</param>
public sealed record ModelShape(
    int HiddenSize, int Layers, int IntermediateSize, int VocabSize, int Heads, int KeyValueHeads, bool TiedEmbeddings,
    int HeadDimension = 0, bool QueryKeyNorm = false)
{
    private int HeadDim => HeadDimension > 0 ? HeadDimension : HiddenSize / Heads;

    /// <summary>The engine's exact facts, when the model is on disk; the counts below then come from them.</summary>
    public ModelFacts? Exact { get; init; }

    /// <summary>The shape of a model on disk, as the engine reads it.</summary>
    public static ModelShape From(ModelFacts facts)
    {
        var c = facts.Config;
        return new ModelShape(c.HiddenSize, c.NumHiddenLayers, c.IntermediateSize, c.VocabSize, c.NumAttentionHeads, c.NumKeyValueHeads,
            c.TieWordEmbeddings, c.HeadDim) { Exact = facts };
    }

    /// <summary>Parameters of all linear projections inside the decoder layers (what NF4 quantizes).</summary>
    public long LinearParameters
    {
        get
        {
            if (Exact is not null) return Exact.QuantizableParameters;
            long h = HiddenSize, q = (long)Heads * HeadDim, kv = (long)KeyValueHeads * HeadDim;
            long attention = h * q * 2 + h * kv * 2; // q, o + k, v
            long mlp = 3L * h * IntermediateSize;     // gate, up, down
            return (attention + mlp) * Layers;
        }
    }

    /// <summary>Embeddings and LM head (with a model on disk: everything NF4 leaves in 16 bits): kept in 16-bit even when the rest is 4-bit.</summary>
    public long EmbeddingParameters => Exact?.UnquantizedParameters ?? (long)VocabSize * HiddenSize * (TiedEmbeddings ? 1 : 2);

    /// <summary>All weights (for a preset, biases aside: a few thousand per layer).</summary>
    public long TotalParameters => Exact?.TotalParameters
        ?? LinearParameters + EmbeddingParameters + (long)Layers * (HiddenSize * 2 + (QueryKeyNorm ? HeadDim * 2 : 0)) + HiddenSize;

    /// <summary>LoRA parameters for rank r on the attention projections q/k/v/o (the tutorial's targets).</summary>
    public long LoraParameters(int r, IReadOnlyCollection<string> targets)
    {
        if (Exact is not null) return Exact.LoraParameters(r, targets);
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

    /// <summary>The shape of the chosen model, when it can be known without downloading: a preset, or the engine's facts of a local folder.</summary>
    public static ModelShape? ShapeOf(TrainingSettings settings) =>
        settings.Source != ModelSource.Local ? Find(settings.Model)?.Shape
        : FactsOf(settings) is { } facts ? ModelShape.From(facts) : null;

    /// <summary>The engine's facts of a local model folder (cached per folder), or null when it is not a model folder we can read.</summary>
    public static ModelFacts? FactsOf(TrainingSettings settings)
    {
        if (settings.Source != ModelSource.Local || !File.Exists(Path.Combine(settings.Model, "config.json"))) return null;
        try { return ModelFacts.Of(settings.Model); }
        catch (Exception e) when (e is ModelFormatException or UnsupportedModelException or IOException or UnauthorizedAccessException) { return null; }
    }

    /// <summary>
    /// The chosen model's linear-layer names (what LoRA can target): every layer of a local folder, or the family's leaf
    /// names for a preset; null when not known before download.
    /// </summary>
    public static IReadOnlyList<string>? LinearNames(TrainingSettings settings) =>
        settings.Source == ModelSource.Local ? FactsOf(settings)?.LinearNames : Find(settings.Model)?.Family.LinearNames;
}
