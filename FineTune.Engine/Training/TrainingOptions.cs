using FineTune.Engine.Data;

namespace FineTune.Engine.Training;

public enum LearningRateScheduleKind
{
    /// <summary>HF get_linear_schedule_with_warmup.</summary>
    Linear,
    /// <summary>HF get_cosine_schedule_with_warmup (half a cosine).</summary>
    Cosine,
    /// <summary>HF get_constant_schedule_with_warmup.</summary>
    Constant,
}

/// <summary>
/// Trainer settings with HF TrainingArguments' meaning. Defaults follow the tutorial
/// (3 epochs, batch 1 × accumulation 4, lr 2e-4) and HF (AdamW β 0.9/0.999, ε 1e-8, weight decay 0,
/// clipping at 1.0, linear schedule, seed 42).
/// </summary>
public sealed record TrainingOptions
{
    public double Epochs { get; init; } = 3;
    public double LearningRate { get; init; } = 2e-4;
    public int BatchSize { get; init; } = 1;
    public int GradientAccumulationSteps { get; init; } = 4;
    public double WeightDecay { get; init; }
    public double AdamBeta1 { get; init; } = 0.9;
    public double AdamBeta2 { get; init; } = 0.999;
    public double AdamEpsilon { get; init; } = 1e-8;
    public double MaxGradNorm { get; init; } = 1.0;
    public LearningRateScheduleKind Schedule { get; init; } = LearningRateScheduleKind.Linear;
    /// <summary>Warmup optimizer steps; when 0, <see cref="WarmupRatio"/> of the total (rounded up) is used.</summary>
    public int WarmupSteps { get; init; }
    public double WarmupRatio { get; init; }
    public int Seed { get; init; } = 42;
    public bool Shuffle { get; init; } = true;
    public BatchLayout Layout { get; init; } = BatchLayout.Packed;
    /// <summary>A progress event every this many optimizer steps (and at the last step).</summary>
    public int LoggingSteps { get; init; } = 1;
    /// <summary>Validation loss every this many steps (0: only at the end of each epoch).</summary>
    public int EvalSteps { get; init; }
    /// <summary>A checkpoint every this many steps (0: none).</summary>
    public int SaveSteps { get; init; }
    /// <summary>Checkpoints kept (oldest deleted first); 0 keeps all.</summary>
    public int SaveTotalLimit { get; init; } = 2;
    /// <summary>
    /// Hidden states per lm_head chunk when computing the loss (bounds the fp32 logits held at once: about 3 x chunk x vocab x
    /// 4 bytes, 0.47 GB at 256 with Qwen's 152k vocabulary, 1.9 GB at 1,024). 256 keeps the matmuls large enough; the extra
    /// chunks cost host calls only without CUDA graphs.
    /// </summary>
    public int LossChunkSize { get; init; } = DefaultLossChunkSize;

    /// <summary>The default <see cref="LossChunkSize"/>, which memory estimates assume too.</summary>
    public const int DefaultLossChunkSize = 256;
    /// <summary>
    /// Keep only each decoder layer's input and run the layer again in backward: activation memory of one layer
    /// instead of all, for about a third more compute. Null: auto, which <see cref="FineTunePipeline"/> decides by the GPU's
    /// memory before training (<see cref="TrainingMemory.ResolveCheckpointing"/>); a trainer still given null (no device
    /// memory known) turns it on for a 4-bit (QLoRA) base, as PEFT's prepare_model_for_kbit_training does.
    /// </summary>
    public bool? GradientCheckpointing { get; init; }
    /// <summary>
    /// Where gradient checkpointing is off, micro-batches longer than most of the run's checkpoint part of their layers so
    /// that they keep about the activations of the run's usual ones (<see cref="LongMicroBatches"/>). On by default.
    /// </summary>
    public bool CheckpointLongMicroBatches { get; init; } = true;
    /// <summary>With <see cref="CheckpointLongMicroBatches"/>: the micro-batches up to this percentile of the run's token counts run as they are (the budget).</summary>
    public double LongMicroBatchPercentile { get; init; } = LongMicroBatches.DefaultPercentile;
    /// <summary>
    /// Where <see cref="GradientCheckpointing"/> is off: the share of decoder layers, the first ones, recomputed in backward
    /// in every micro-batch (0 to 1). <see cref="FineTunePipeline"/> sets it where the GPU holds the run with only some
    /// layers recomputed (<see cref="CheckpointingReason.SomeLayers"/>).
    /// </summary>
    public double CheckpointedShare { get; init; }
    /// <summary>Dynamic loss scaling for fp16 compute (where bf16 is missing).</summary>
    public bool UseLossScaling { get; init; }
    /// <summary>Stop after this many optimizer steps (for tests and "crash" simulation); 0: run to the end.</summary>
    public int StopAfterSteps { get; init; }

    public void Validate()
    {
        if (!(Epochs > 0)) throw new ArgumentOutOfRangeException(nameof(Epochs), Epochs, "Epochs must be more than 0 (e.g. 3).");
        if (!(LearningRate > 0) || LearningRate > 1) throw new ArgumentOutOfRangeException(nameof(LearningRate), LearningRate, "The learning rate must be in (0, 1]; 2e-4 is usual for LoRA.");
        if (BatchSize < 1) throw new ArgumentOutOfRangeException(nameof(BatchSize), BatchSize, "The batch size must be at least 1.");
        if (GradientAccumulationSteps < 1) throw new ArgumentOutOfRangeException(nameof(GradientAccumulationSteps), GradientAccumulationSteps, "Gradient accumulation must be at least 1.");
        if (WarmupSteps < 0 || WarmupRatio < 0 || WarmupRatio >= 1) throw new ArgumentOutOfRangeException(nameof(WarmupRatio), WarmupRatio, "Warmup steps must be ≥ 0 and the warmup ratio in [0, 1).");
        if (LoggingSteps < 1) throw new ArgumentOutOfRangeException(nameof(LoggingSteps), LoggingSteps, "Logging steps must be at least 1.");
        if (SaveSteps < 0 || SaveTotalLimit < 0 || EvalSteps < 0) throw new ArgumentOutOfRangeException(nameof(SaveSteps), "Save/eval steps and the checkpoint limit cannot be negative.");
        if (MaxGradNorm < 0) throw new ArgumentOutOfRangeException(nameof(MaxGradNorm), MaxGradNorm, "max_grad_norm cannot be negative (0 turns clipping off).");
        if (!(CheckpointedShare >= 0 && CheckpointedShare <= 1)) throw new ArgumentOutOfRangeException(nameof(CheckpointedShare), CheckpointedShare, "The share of checkpointed layers must be in [0, 1].");
        LongMicroBatches.ThrowIfNotPercentile(LongMicroBatchPercentile, nameof(LongMicroBatchPercentile));
    }

    /// <summary>Micro-batches per epoch (HF's len(dataloader)): ceil(rows / batch).</summary>
    public int BatchesPerEpoch(int trainRows) => (trainRows + BatchSize - 1) / BatchSize;

    /// <summary>HF Trainer's optimizer steps per epoch: ceil(ceil(rows / batch) / accumulation), at least 1.</summary>
    public int StepsPerEpoch(int trainRows) =>
        Math.Max(1, (BatchesPerEpoch(trainRows) + GradientAccumulationSteps - 1) / GradientAccumulationSteps);

    /// <summary>HF Trainer's max_steps: ceil(epochs × steps per epoch).</summary>
    public int TotalSteps(int trainRows) => (int)Math.Ceiling(Epochs * StepsPerEpoch(trainRows));

    /// <summary>
    /// Whether the validation loss is computed after optimizer step <paramref name="step"/> (1-based): every
    /// <see cref="EvalSteps"/> steps (or at each epoch's end when 0), and always after the last.
    /// </summary>
    public bool EvaluatesAfter(int step, int totalSteps, int stepsPerEpoch) =>
        step == totalSteps || (EvalSteps > 0 ? step % EvalSteps == 0 : step % stepsPerEpoch == 0);

    /// <summary>How many evaluations a run of <paramref name="totalSteps"/> makes (when it has validation rows).</summary>
    public int EvaluationCount(int totalSteps, int stepsPerEpoch) =>
        Enumerable.Range(1, Math.Max(0, totalSteps)).Count(step => EvaluatesAfter(step, totalSteps, stepsPerEpoch));

    /// <summary>HF get_warmup_steps: warmup_steps if &gt; 0, else ceil(total × warmup_ratio).</summary>
    public int WarmupStepCount(int totalSteps) => WarmupSteps > 0 ? WarmupSteps : (int)Math.Ceiling(totalSteps * WarmupRatio);
}
