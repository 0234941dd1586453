using FineTune.Engine.Data;
using FineTune.Web.Features.Models;

namespace FineTune.Web.Features.Settings;

/// <summary>How the rows split and how many optimizer steps training takes.</summary>
public sealed record StepPlan(int TrainRows, int EvalRows, int BatchesPerEpoch, int StepsPerEpoch, int TotalSteps, int WarmupSteps);

/// <summary>Bytes a training needs, by part, for one device.</summary>
public sealed record MemoryEstimate(long Weights, long Adapter, long Activations, long Overhead)
{
    public long Total => Weights + Adapter + Activations + Overhead;
}

/// <summary>
/// Numbers shown before training starts: steps (Hugging Face Trainer's formula, so the count matches what
/// the tutorial's notebook prints), memory and a rough time. Memory and time are estimates and say so in the UI.
/// </summary>
public static class TrainingEstimator
{
    /// <summary>Fewer rows than this train without an evaluation split (FineTune.Engine Batching.Split).</summary>
    public const int MinimumRowsForEval = Batching.MinimumRowsForValidation;

    /// <summary>
    /// The engine's own numbers (HF Trainer's formula, TrainingOptions): batches = ceil(train_rows / batch);
    /// updates per epoch = max(ceil(batches / accumulation), 1); max_steps = ceil(epochs × updates per epoch);
    /// warmup = ceil(max_steps × warmup_ratio). Eval rows as Batching.Split takes them. No rows: no steps.
    /// </summary>
    public static StepPlan Plan(int rows, TrainingSettings s)
    {
        int evalRows = Batching.ValidationCount(rows, s.EvalFraction, MinimumRowsForEval);
        int trainRows = rows - evalRows;
        var options = s.ToTrainingOptions();
        int total = trainRows == 0 ? 0 : options.TotalSteps(trainRows);
        return new StepPlan(trainRows, evalRows, options.BatchesPerEpoch(trainRows), options.StepsPerEpoch(trainRows), total, options.WarmupStepCount(total));
    }

    /// <summary>Evaluations per run by default: enough points for a curve, few enough that evaluating stays a small share of the run.</summary>
    public const int EvaluationsPerRun = 10;

    /// <summary>
    /// Steps between evaluations: about <see cref="EvaluationsPerRun"/> per run (and always one at the end). Evaluating at every
    /// logging step over the whole validation split made a 20,000-row run ~10x longer than its training steps.
    /// </summary>
    public static int EvalInterval(int totalSteps) => Math.Max(1, (int)Math.Ceiling(totalSteps / (double)EvaluationsPerRun));

    /// <summary>Training memory for batch × max length tokens, with or without 4-bit NF4 base weights.</summary>
    public static MemoryEstimate Memory(ModelShape shape, TrainingSettings s, bool fourBit)
    {
        long weights = fourBit
            // NF4: 4 bits per weight plus block constants (64 per block: fp32 absmax, or ~8 bits with double quantization).
            ? (long)(shape.LinearParameters * (0.5 + (s.DoubleQuantization ? 0.127 : 0.5) / 8)) + shape.EmbeddingParameters * 2
            : (shape.LinearParameters + shape.EmbeddingParameters) * 2;
        // LoRA in fp32: weight, gradient and AdamW's two moments.
        long adapter = shape.LoraParameters(s.LoraR, s.TargetModules) * 16;
        long tokens = (long)s.BatchSize * s.MaxSeqLength;
        // Per layer ~34 bytes × hidden per token in 16-bit (Korthikanti et al.) plus attention scores; fp32 logits and their gradient.
        long perLayer = tokens * shape.HiddenSize * 34 + 5L * shape.Heads * s.MaxSeqLength * s.MaxSeqLength * s.BatchSize;
        // A 4-bit base trains with gradient checkpointing (the engine's default, as PEFT's prepare_model_for_kbit_training):
        // each layer keeps only its 16-bit input, and one layer's activations exist at a time while backward recomputes it.
        bool checkpointing = fourBit;
        long layerActivations = checkpointing ? tokens * shape.HiddenSize * 2 * shape.Layers + perLayer : perLayer * shape.Layers;
        long activations = layerActivations + tokens * shape.VocabSize * 8;
        long overhead = 512L * 1024 * 1024 + (weights + adapter + activations) / 10;
        return new MemoryEstimate(weights, adapter, activations, overhead);
    }

    private static readonly TimeSpan MaxEstimate = TimeSpan.FromDays(3650);

    /// <summary>Rough wall time: 6 × parameters FLOPs per token (forward + backward), at an assumed sustained speed.</summary>
    public static TimeSpan Time(ModelShape shape, int totalTokens, TrainingSettings s, bool cuda, int cpuThreads)
    {
        double flops = 6.0 * shape.TotalParameters * totalTokens * s.Epochs;
        double perSecond = cuda ? 40e12 : Math.Max(cpuThreads, 1) * 8e9;
        if (s.Quantization == Quantization.Nf4) perSecond /= 1.5; // dequantizing each weight on the fly
        // Capped at ten years: a huge config.json must not overflow TimeSpan (that ended the settings page's circuit).
        return TimeSpan.FromSeconds(Math.Clamp(flops / perSecond, 1, MaxEstimate.TotalSeconds));
    }

    /// <summary>
    /// Token count of one row until the real tokenizer is wired in: Chinese/Japanese/Korean characters count
    /// about one token each in Qwen/Llama-3 vocabularies, other text about four characters a token, plus the prompt template.
    /// </summary>
    public static int EstimateTokens(QaRow row)
    {
        int cjk = 0, other = 0;
        foreach (char c in row.System + row.Instruction + row.Input + row.Output)
        {
            if (c >= 0x2E80 && c <= 0x9FFF || c >= 0xAC00 && c <= 0xD7AF || c >= 0xF900 && c <= 0xFAFF || c >= 0xFF00 && c <= 0xFFEF) cjk++;
            else other++;
        }
        return cjk + (other + 3) / 4 + 16;
    }
}
