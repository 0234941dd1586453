using FineTune.Engine.Data;
using FineTune.Engine.Training;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.Runs;

/// <summary>What the queue hands the trainer.</summary>
/// <param name="OutputDirectory">data/runs/&lt;id&gt;/: checkpoints go to checkpoints/checkpoint-&lt;step&gt;/, the final adapter to adapter/.</param>
/// <param name="ResumeFromCheckpoint">The newest complete checkpoint of an interrupted run, or null to start fresh.</param>
/// <param name="Gpus">CUDA ordinals the queue gave the run (more than one: data parallel); null or empty: the backend's device.</param>
public sealed record TrainingJob(int RunId, TrainingSettings Settings, IReadOnlyList<QaRow> Rows, string OutputDirectory, string? ResumeFromCheckpoint = null,
    IReadOnlyList<int>? Gpus = null)
{
    /// <summary>A chat run's conversations (then <see cref="Rows"/> is empty).</summary>
    public IReadOnlyList<Conversation> Conversations { get; init; } = [];
}

/// <summary>How a finished training ended.</summary>
public sealed record TrainingOutcome(double? FinalTrainLoss, double? FinalEvalLoss, string AdapterDirectory, string? LastCheckpoint = null);

/// <summary>
/// The web's one door to the training engine. The queue calls it once per run, for runs on different GPUs at the same
/// time; it reports the engine's
/// <see cref="TrainingProgress"/> through <paramref name="progress"/> synchronously (the queue orders and persists reports) and stops on cancellation
/// by throwing <see cref="OperationCanceledException"/>.
/// </summary>
public interface ITrainingRunner
{
    Task<TrainingOutcome> RunAsync(TrainingJob job, IProgress<TrainingProgress> progress, CancellationToken cancellationToken);
}
