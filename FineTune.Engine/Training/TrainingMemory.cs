using FineTune.Engine.Adapters;
using FineTune.Engine.Models;

namespace FineTune.Engine.Training;

/// <summary>What a training run asks of one device's memory, as <see cref="TrainingMemory.Estimate"/> takes it.</summary>
/// <param name="ComputeBytes">Bytes per element of the base weights and activations: 2 (bf16/fp16, the GPU default) or 4 (fp32).</param>
/// <param name="GradientCheckpointing">null: the trainer's default, on with a 4-bit base (as <see cref="LoraTrainer"/> decides).</param>
public sealed record MemoryQuery(
    LoraSettings Lora, int BatchSize, int MaxSeqLength, bool FourBit, bool DoubleQuantization = true, bool? GradientCheckpointing = null,
    int ComputeBytes = 2, int LossChunkSize = TrainingOptions.DefaultLossChunkSize);

/// <summary>Bytes a training run needs on one device, by part (each replica of a data-parallel run needs the whole of it).</summary>
/// <param name="Weights">The frozen base: NF4 linears (4 bits + block scales) and 16-bit everything else, or all of it in 16 bits.</param>
/// <param name="Adapter">The LoRA weights and their gradients, in fp32.</param>
/// <param name="OptimizerStates">AdamW's two moments per trainable parameter, in fp32.</param>
/// <param name="Activations">What forward keeps for backward, and the loss's logits.</param>
/// <param name="Overhead">The CUDA context and libtorch's workspaces, dequantized weights in flight, the allocator's slack.</param>
public sealed record MemoryEstimate(long Weights, long Adapter, long OptimizerStates, long Activations, long Overhead, long TrainableParameters, bool GradientCheckpointing)
{
    public long Total => Weights + Adapter + OptimizerStates + Activations + Overhead;
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

    public static MemoryEstimate Estimate(ModelFacts facts, MemoryQuery q)
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
        bool checkpointing = q.GradientCheckpointing ?? q.FourBit;
        long layers = checkpointing
            // Each layer keeps only its input; backward recomputes one layer at a time.
            ? tokens * c.HiddenSize * q.ComputeBytes * c.NumHiddenLayers + layerBytes
            : layerBytes * c.NumHiddenLayers;
        // The loss runs over chunks of tokens: fp32 logits, their log-softmax and its gradient for one chunk at a time.
        long logits = Math.Min(tokens, q.LossChunkSize) * (long)c.VocabSize * 4 * 3;
        long activations = layers + logits;

        // A 4-bit linear is dequantized to 16 bits for its matmul (forward, and again in backward): the widest two in flight.
        long dequantized = q.FourBit
            ? 2L * q.ComputeBytes * facts.Linears.Where(l => l.Name != nameof(CausalLM.lm_head)).Select(l => (long)l.InFeatures * l.OutFeatures).DefaultIfEmpty().Max()
            : 0;
        long overhead = RuntimeBytes + dequantized + (weights + adapter + optimizer + activations) / 20;
        return new MemoryEstimate(weights, adapter, optimizer, activations, overhead, trainable, checkpointing);
    }

    /// <summary>"model.layers.0.self_attn.q_proj", "transformer.h.0.attn.c_attn": the first decoder layer's linears (all layers are alike).</summary>
    private static bool InFirstLayer(string name) => name.Contains(".0.", StringComparison.Ordinal);

    /// <summary>NF4's bytes per weight: 4 bits, plus one absmax per 64 (fp32, or 8 bits and a shared fp32 scale with double quantization).</summary>
    public static double Nf4BytesPerWeight(bool doubleQuantization) =>
        0.5 + (doubleQuantization ? 1.0 / Nf4Block + 4.0 / (Nf4Block * Nf4ScaleBlock) : 4.0 / Nf4Block);
}
