using System.Collections.Concurrent;
using FineTune.Engine.Adapters;
using static TorchSharp.torch;

namespace FineTune.Engine.Models;

/// <summary>One linear layer of a model: its checkpoint name and shape (what LoRA can target).</summary>
public sealed record LinearFacts(string Name, int InFeatures, int OutFeatures);

/// <summary>
/// What a front end needs to know about a model before loading it, read off the module tree built on the meta device
/// (no weights, no memory): exact parameter counts, the linear layers (valid LoRA targets), the family. The web's
/// model and settings steps ask for these instead of reading config.json themselves.
/// </summary>
/// <param name="TotalParameters">Every weight and bias (tied embeddings counted once).</param>
/// <param name="QuantizableParameters">Weights of the linear layers but lm_head: what NF4 (QLoRA) stores in 4 bits.</param>
public sealed record ModelFacts(ModelConfig Config, long TotalParameters, long QuantizableParameters, IReadOnlyList<LinearFacts> Linears)
{
    private static readonly ConcurrentDictionary<string, (DateTime ConfigWritten, ModelFacts Facts)> Cache = new(StringComparer.Ordinal);

    public ModelFamily Family => Config.Family;

    /// <summary>Parameters kept in 16 bits under QLoRA: embeddings, lm_head, norms, biases.</summary>
    public long UnquantizedParameters => TotalParameters - QuantizableParameters;

    /// <summary>The linear layers' checkpoint names ("model.layers.0.self_attn.q_proj", ..., "lm_head").</summary>
    public IReadOnlyList<string> LinearNames => [.. Linears.Select(l => l.Name)];

    /// <summary>
    /// Bytes the base weights take once loaded, <paramref name="bytesPerElement"/> each (2 for bf16/fp16, 4 for fp32). With
    /// <paramref name="fourBit"/> the linear layers but lm_head are NF4 (<see cref="Training.TrainingMemory.Nf4BytesPerWeight"/>);
    /// embeddings, lm_head, norms and biases stay in the load's dtype. The one count the load check and the training
    /// estimate share.
    /// </summary>
    public long WeightBytes(int bytesPerElement, bool fourBit, bool doubleQuantization = true) => fourBit
        ? (long)(QuantizableParameters * Training.TrainingMemory.Nf4BytesPerWeight(doubleQuantization)) + UnquantizedParameters * bytesPerElement
        : TotalParameters * bytesPerElement;

    /// <summary>LoRA parameters for rank <paramref name="rank"/> on the layers the targets select (PEFT's rule): r × (in + out) each.</summary>
    public long LoraParameters(int rank, IReadOnlyCollection<string> targets) =>
        Linears.Where(l => targets.Any(t => LoraInjector.Matches(l.Name, t))).Sum(l => (long)rank * (l.InFeatures + l.OutFeatures));

    /// <summary>The facts of a config: its model built on the meta device.</summary>
    public static ModelFacts Of(ModelConfig config)
    {
        _ = Backend.ComputeBackend.Current; // libtorch is loaded by the backend's choice, before any tensor
        using var model = ModelLoader.Create(config, new ModelBuild(CPU, ScalarType.BFloat16));
        long total = model.parameters().Sum(p => p.numel());
        if (config.TieWordEmbeddings) total -= model.lm_head.weight!.numel(); // one tensor once loaded
        var linears = model.NamedLinears().Select(l => new LinearFacts(l.Name, l.Layer.InFeatures, l.Layer.OutFeatures)).ToList();
        long quantizable = linears.Where(l => l.Name != nameof(CausalLM.lm_head)).Sum(l => (long)l.InFeatures * l.OutFeatures);
        return new ModelFacts(config, total, quantizable, linears);
    }

    /// <summary>The facts of a model folder, kept per folder until its config.json changes.</summary>
    public static ModelFacts Of(string folder)
    {
        string full = Path.GetFullPath(folder);
        var written = File.GetLastWriteTimeUtc(Path.Combine(full, "config.json"));
        if (Cache.TryGetValue(full, out var cached) && cached.ConfigWritten == written) return cached.Facts;
        var facts = Of(ModelConfig.Load(full));
        Cache[full] = (written, facts);
        return facts;
    }
}
