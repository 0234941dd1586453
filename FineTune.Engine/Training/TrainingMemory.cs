using FineTune.Engine.Adapters;
using FineTune.Engine.Models;

namespace FineTune.Engine.Training;

/// <summary>What a training run asks of one device's memory, as <see cref="TrainingMemory.Estimate"/> takes it.</summary>
/// <param name="ComputeBytes">Bytes per element of the base weights and activations: 2 (bf16/fp16, the GPU default) or 4 (fp32).</param>
/// <param name="GradientCheckpointing">null: auto, decided by the device's memory (<see cref="TrainingMemory.ResolveCheckpointing"/>).</param>
public sealed record MemoryQuery(
    LoraSettings Lora, int BatchSize, int MaxSeqLength, bool FourBit, bool DoubleQuantization = true, bool? GradientCheckpointing = null,
    int ComputeBytes = 2, int LossChunkSize = TrainingOptions.DefaultLossChunkSize);

/// <summary>Bytes a training run needs on one device, by part (each replica of a data-parallel run needs the whole of it).</summary>
/// <param name="Weights">The frozen base: NF4 linears (4 bits + block scales) and 16-bit everything else, or all of it in 16 bits.</param>
/// <param name="Adapter">The LoRA weights and their gradients, in fp32.</param>
/// <param name="OptimizerStates">AdamW's two moments per trainable parameter, in fp32.</param>
/// <param name="Activations">What forward keeps for backward, and the loss's logits.</param>
/// <param name="Overhead">The CUDA context and libtorch's workspaces, dequantized weights in flight, the allocator's slack.</param>
/// <param name="Checkpointing">Whether the estimate recomputes each layer in backward, and why (as the run will decide it).</param>
public sealed record MemoryEstimate(long Weights, long Adapter, long OptimizerStates, long Activations, long Overhead, long TrainableParameters, CheckpointingChoice Checkpointing)
{
    public long Total => Weights + Adapter + OptimizerStates + Activations + Overhead;

    public bool GradientCheckpointing => Checkpointing.On;
}

/// <summary>Why a run recomputes its layers in backward or not (<see cref="TrainingMemory.ResolveCheckpointing"/>).</summary>
public enum CheckpointingReason
{
    /// <summary>Set on or off explicitly.</summary>
    AsSet,

    /// <summary>Auto, and the run fits the device's memory without it: off, for the faster step.</summary>
    FitsWithout,

    /// <summary>Auto, and without it the run would need more than the device's usable memory: on.</summary>
    TooBigWithout,

    /// <summary>
    /// Auto, and without it the run would need more than the device's usable memory, but with only its first layers
    /// recomputed (<see cref="CheckpointingChoice.Layers"/> of <see cref="CheckpointingChoice.OfLayers"/>) it fits: those
    /// alone, for steps faster than with every layer recomputed.
    /// </summary>
    SomeLayers,

    /// <summary>Auto, with the device's memory (or the model's facts) unknown, as on the CPU: on with a 4-bit base, as PEFT's prepare_model_for_kbit_training does.</summary>
    DeviceUnknown,
}

/// <summary>Whether a run uses gradient checkpointing, why, and the numbers it was decided by.</summary>
/// <param name="On">Every decoder layer recomputed in backward.</param>
/// <param name="BytesWithout">The estimate without checkpointing, when the device's memory decided.</param>
/// <param name="DeviceBytes">The device memory it was decided against (the smallest GPU of a data-parallel run).</param>
/// <param name="Layers">With <see cref="CheckpointingReason.SomeLayers"/>: how many decoder layers, the first ones, are recomputed.</param>
/// <param name="OfLayers">With <see cref="CheckpointingReason.SomeLayers"/>: the model's decoder layers.</param>
public sealed record CheckpointingChoice(bool On, CheckpointingReason Reason, long? BytesWithout = null, long? DeviceBytes = null, int? Layers = null, int? OfLayers = null)
{
    /// <summary>The share of decoder layers recomputed: 1 when on, k / layers for <see cref="CheckpointingReason.SomeLayers"/>, else 0.</summary>
    public double Share => On ? 1 : Layers is int k && OfLayers is int all && all > 0 ? (double)k / all : 0;

    /// <summary>The log line: "gradient checkpointing off: the run needs about 9.8 GiB of the GPU's 139.8 GiB".</summary>
    public override string ToString()
    {
        string state = On ? "on" : "off";
        return Reason switch
        {
            CheckpointingReason.FitsWithout => $"gradient checkpointing off: the run needs about {GiB(BytesWithout)} of the GPU's {GiB(DeviceBytes)}",
            CheckpointingReason.TooBigWithout => $"gradient checkpointing on: without it the run would need about {GiB(BytesWithout)}, " +
                                                 $"more than {Math.Round(TrainingMemory.UsableShare * 100)}% of the GPU's {GiB(DeviceBytes)}",
            CheckpointingReason.SomeLayers => $"gradient checkpointing on for the first {Layers} of {OfLayers} layers: without it the run would need " +
                                              $"about {GiB(BytesWithout)}, more than {Math.Round(TrainingMemory.UsableShare * 100)}% of the GPU's {GiB(DeviceBytes)}",
            CheckpointingReason.DeviceUnknown => $"gradient checkpointing {state}: the device's memory is unknown, so the default " +
                                                 (On ? "with a 4-bit base" : "with a 16-bit base"),
            _ => $"gradient checkpointing {state}: as set",
        };
    }

    private static string GiB(long? bytes) =>
        string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{(bytes ?? 0) / (double)(1L << 30):0.0} GiB");
}

/// <summary>
/// The engine's one training-memory estimate, from the model's exact facts (<see cref="ModelFacts"/>, built on the meta
/// device): parameter counts by how they are stored, the LoRA layers the targets select, and per-token activations
/// from the widths of a decoder layer's linears. Checked against peaks measured on an H200 (docs/benchmarks.md).
/// </summary>
public static class TrainingMemory
{
    /// <summary>bitsandbytes' NF4 block: 64 weights share one absmax.</summary>
    private const int Nf4Block = 64;

    /// <summary>Double quantization: the absmaxes in 8 bits, 256 of them sharing one fp32 scale.</summary>
    private const int Nf4ScaleBlock = 256;

    /// <summary>
    /// What nvidia-smi shows beyond the tensors: the CUDA context with libtorch's and FineTune's kernels, cuBLAS workspaces,
    /// and the rounding of a CUDA graph's private memory pool (its blocks are not shared with the rest of the run): 1.3 GiB
    /// on an H200 with CUDA 13. The four QLoRA peaks measured with graphs on (0.5B and 7B, with and without checkpointing,
    /// 2026-11-30) sit within 5% of the estimate with this constant; their differences (what checkpointing saves) follow
    /// from the model's widths alone.
    /// </summary>
    public const long RuntimeBytes = (13L << 30) / 10;

    /// <summary>
    /// Share of a GPU's memory a run may plan to fill without gradient checkpointing. The estimate is within 5% of the
    /// measured peaks; the other 5% is for what the estimate does not see: the caching allocator's fragmentation as
    /// batches of changing lengths come and go over a long run, and whatever else holds memory on the card. Running out
    /// of memory an hour into a run costs far more than the ~25-30% of each step that recomputing the layers costs.
    /// </summary>
    public const double UsableShare = 0.9;

    /// <summary>
    /// The one rule for gradient checkpointing: set on or off, it is that; auto (null) with the device's memory known, off
    /// when the run without it fits within <see cref="UsableShare"/> of that memory, else the fewest first layers with which
    /// it fits (<see cref="CheckpointingReason.SomeLayers"/>: each recomputed layer costs about a third of its step time, so
    /// fewer recomputed layers make faster steps), else on; auto with the device's memory or the model's facts unknown (the
    /// CPU), on with a 4-bit base only, as before memory decided.
    /// </summary>
    /// <param name="deviceBytes">The GPU's total memory (the smallest of a data-parallel run's: each replica holds the whole model); null when unknown.</param>
    public static CheckpointingChoice ResolveCheckpointing(ModelFacts? facts, MemoryQuery q, long? deviceBytes)
    {
        if (q.GradientCheckpointing is bool set) return new CheckpointingChoice(set, CheckpointingReason.AsSet);
        if (facts is null || deviceBytes is not long device) return new CheckpointingChoice(WithoutDeviceMemory(q.FourBit), CheckpointingReason.DeviceUnknown);
        long without = Estimate(facts, q, new CheckpointingChoice(false, CheckpointingReason.AsSet)).Total;
        if (without <= device * UsableShare) return new CheckpointingChoice(false, CheckpointingReason.FitsWithout, without, device);
        // The fewest first layers that make it fit: each one recomputed keeps its input instead of its activations.
        int layers = facts.Config.NumHiddenLayers;
        for (int k = 1; k < layers; k++)
        {
            var some = new CheckpointingChoice(false, CheckpointingReason.SomeLayers, without, device, k, layers);
            if (Estimate(facts, q, some).Total <= device * UsableShare) return some;
        }
        return new CheckpointingChoice(true, CheckpointingReason.TooBigWithout, without, device);
    }

    /// <summary>Auto gradient checkpointing where no device memory decides it (the CPU, a trainer used on its own): on with a 4-bit base, as PEFT's prepare_model_for_kbit_training.</summary>
    public static bool WithoutDeviceMemory(bool fourBit) => fourBit;

    /// <summary>The run's memory, with gradient checkpointing as the run will decide it (<see cref="ResolveCheckpointing"/>) against <paramref name="deviceBytes"/>.</summary>
    public static MemoryEstimate Estimate(ModelFacts facts, MemoryQuery q, long? deviceBytes = null) =>
        Estimate(facts, q, ResolveCheckpointing(facts, q, deviceBytes));

    private static MemoryEstimate Estimate(ModelFacts facts, MemoryQuery q, CheckpointingChoice checkpointingChoice)
    {
        var c = facts.Config;
        long weights = facts.WeightBytes(q.ComputeBytes, q.FourBit, q.DoubleQuantization);

        var targeted = facts.Linears.Where(l => q.Lora.Targets.Any(t => LoraInjector.Matches(l.Name, t))).ToList();
        long trainable = targeted.Sum(l => (long)q.Lora.Rank * (l.InFeatures + l.OutFeatures));
        long adapter = trainable * (4 + 4);       // fp32 weight + gradient
        long optimizer = trainable * (4 + 4);     // AdamW exp_avg + exp_avg_sq

        // Per token and decoder layer, what autograd keeps (elements): every linear's output (the fused SwiGLU keeps gate and
        // up, not their product), the two norms' inputs, and for each LoRA layer its dropped-out input (kept by lora_A's
        // matmul; without dropout the input itself, which only the widest, the MLP product, adds) and its r-wide middle.
        long tokens = (long)q.BatchSize * q.MaxSeqLength;
        var layer0 = facts.Linears.Where(l => InFirstLayer(l.Name)).ToList();
        var layer0Targeted = targeted.Where(l => InFirstLayer(l.Name)).ToList();
        int widestInput = layer0.Count == 0 ? 0 : layer0.Max(l => l.InFeatures);
        long perTokenLayer = layer0.Sum(l => (long)l.OutFeatures) + 2L * c.HiddenSize
                             + layer0Targeted.Sum(l => (q.Lora.Dropout > 0 ? l.InFeatures : 0) + (long)q.Lora.Rank)
                             + (q.Lora.Dropout == 0 && layer0Targeted.Any(l => l.InFeatures == widestInput && widestInput > c.HiddenSize) ? widestInput : 0);
        long layerBytes = tokens * perTokenLayer * q.ComputeBytes;
        long inputBytes = tokens * c.HiddenSize * q.ComputeBytes;
        int recomputed = checkpointingChoice.Layers ?? 0;
        long layers = checkpointingChoice.On
            // Each layer keeps only its input; backward recomputes one layer at a time.
            ? inputBytes * c.NumHiddenLayers + layerBytes
            // The first k keep their inputs, the others everything; backward recomputes the first layers when the others'
            // activations are gone, so one recomputed layer's activations never add to the rest.
            : inputBytes * recomputed + layerBytes * (c.NumHiddenLayers - recomputed);
        // The loss runs over chunks of tokens: fp32 logits, their log-softmax and its gradient for one chunk at a time.
        long logits = Math.Min(tokens, q.LossChunkSize) * (long)c.VocabSize * 4 * 3;
        long activations = layers + logits;

        // A 4-bit linear is dequantized to 16 bits for its matmul (forward, and again in backward): the widest two in flight.
        long dequantized = q.FourBit
            ? 2L * q.ComputeBytes * facts.Linears.Where(l => l.Name != nameof(CausalLM.lm_head)).Select(l => (long)l.InFeatures * l.OutFeatures).DefaultIfEmpty().Max()
            : 0;
        long overhead = RuntimeBytes + dequantized + (weights + adapter + optimizer + activations) / 20;
        return new MemoryEstimate(weights, adapter, optimizer, activations, overhead, trainable, checkpointingChoice);
    }

    /// <summary>"model.layers.0.self_attn.q_proj", "transformer.h.0.attn.c_attn": the first decoder layer's linears (all layers are alike).</summary>
    private static bool InFirstLayer(string name) => name.Contains(".0.", StringComparison.Ordinal);

    /// <summary>NF4's bytes per weight: 4 bits, plus one absmax per 64 (fp32, or 8 bits and a shared fp32 scale with double quantization).</summary>
    public static double Nf4BytesPerWeight(bool doubleQuantization) =>
        0.5 + (doubleQuantization ? 1.0 / Nf4Block + 4.0 / (Nf4Block * Nf4ScaleBlock) : 4.0 / Nf4Block);
}
