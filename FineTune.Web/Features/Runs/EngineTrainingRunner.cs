namespace FineTune.Web.Features.Runs;

/// <summary>
/// The real trainer: FineTune.Engine's Training. Until the engine's trainer is part of this build, a run fails
/// with this message instead of pretending to train.
/// </summary>
public sealed class EngineTrainingRunner : ITrainingRunner
{
    public Task<TrainingOutcome> RunAsync(TrainingJob job, IProgress<TrainingProgress> progress, CancellationToken cancellationToken) =>
        throw new NotSupportedException(
            "This build has no training engine yet (FineTune.Engine/Training). Update FineTune to a version that includes it.");
}
