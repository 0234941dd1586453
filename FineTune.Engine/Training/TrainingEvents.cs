namespace FineTune.Engine.Training;

/// <summary>
/// One progress report of a training run: at every logging step (HF's log line, plus speed and memory), at every
/// evaluation, and after every checkpoint is saved. The same record reaches the console, the run database, the hub
/// and the page. The loss window's fields (loss, learning rate, gradient norm, speed) are null in a report made only
/// for a checkpoint.
/// </summary>
/// <param name="Step">Optimizer steps done (1-based).</param>
/// <param name="TotalSteps">Optimizer steps the run will take.</param>
/// <param name="Epoch">Fractional epoch reached (HF style: 1.5 = half-way through the second epoch).</param>
/// <param name="Loss">Mean token loss of the steps since the last logging report.</param>
/// <param name="EvalLoss">Validation loss, when it was computed at this step.</param>
/// <param name="LearningRate">The learning rate this step used (what HF Trainer logs).</param>
/// <param name="GradNorm">Gradient norm before clipping, of this step.</param>
/// <param name="TokensPerSecond">Input tokens per second since the run (or resume) started.</param>
/// <param name="Elapsed">Wall time since the run (or resume) started.</param>
/// <param name="Eta">Estimated time left.</param>
/// <param name="GpuMemoryBytes">GPU memory in use, where a GPU is used.</param>
/// <param name="CheckpointPath">The checkpoint folder saved at this step, complete on disk before this report was made.</param>
public sealed record TrainingProgress(
    int Step,
    int TotalSteps,
    double Epoch,
    double? Loss = null,
    double? EvalLoss = null,
    double? LearningRate = null,
    double? GradNorm = null,
    double? TokensPerSecond = null,
    TimeSpan Elapsed = default,
    TimeSpan? Eta = null,
    long? GpuMemoryBytes = null,
    string? CheckpointPath = null);

/// <summary>A finished (or stopped) run.</summary>
public sealed record TrainingResult(
    int StepsDone, int TotalSteps, IReadOnlyList<StepRecord> History, double? FinalTrainLoss, double? FinalEvalLoss,
    bool Completed, string? LastCheckpoint);

/// <summary>One optimizer step, as kept for loss.csv and checkpoints.</summary>
public sealed record StepRecord(int Step, double Epoch, double Loss, double LearningRate, double GradNorm, double? EvalLoss = null);

/// <summary>The GPU (or CPU) ran out of memory during a step. The process stays usable; try the remedies.</summary>
public sealed class TrainingOutOfMemoryException(string where, Exception inner)
    : InvalidOperationException(
        $"Out of memory during {where}. Try, in this order: a smaller batch size (with more gradient accumulation to keep the effective batch), " +
        "a shorter max length, 4-bit (QLoRA) loading of the base model, a lower LoRA rank, or a smaller model.", inner);

/// <summary>A checkpoint folder cannot be resumed from.</summary>
public sealed class CheckpointException(string message, Exception? inner = null) : IOException(message, inner);
