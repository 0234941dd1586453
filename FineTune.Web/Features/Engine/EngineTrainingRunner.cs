using FineTune.Engine.Adapters;
using FineTune.Engine.Training;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.Engine;

/// <summary>
/// Trains a run with the engine's <see cref="FineTunePipeline"/> (the same one the headless `train` command and the
/// benchmark call): maps the wizard's settings to a <see cref="FineTuneJob"/>, checkpoints in checkpoints/, the adapter
/// folder in adapter/.
/// </summary>
public sealed class EngineTrainingRunner(EngineModels models, ILoggerFactory loggers) : ITrainingRunner
{
    public const string CheckpointsFolder = RunStore.CheckpointsFolder;

    public async Task<TrainingOutcome> RunAsync(TrainingJob job, IProgress<TrainingProgress> progress, CancellationToken cancellationToken)
    {
        string folder = await models.ResolveFolderAsync(job.Settings, cancellationToken);
        var fineTune = ToFineTuneJob(job, folder);
        var outcome = await new FineTunePipeline(loggers).RunAsync(fineTune, progress, cancellationToken);
        var result = outcome.Training;
        return new TrainingOutcome(result.FinalTrainLoss, result.FinalEvalLoss, outcome.AdapterFolder!, result.LastCheckpoint);
    }

    /// <summary>The wizard's settings as the engine's job (<see cref="TrainingSettings.ToFineTuneJob"/>), with what this run adds.</summary>
    public FineTuneJob ToFineTuneJob(TrainingJob job, string modelFolder)
    {
        var s = job.Settings;
        var fineTune = s.ToFineTuneJob(modelFolder, job.Rows,
            Path.Combine(job.OutputDirectory, ArtifactPackager.AdapterFolder), Path.Combine(job.OutputDirectory, CheckpointsFolder));
        return fineTune with
        {
            Conversations = job.Conversations,
            // Validation loss about ten times per run (not at every logged step: each evaluation runs the whole split).
            Training = fineTune.Training with { EvalSteps = TrainingEstimator.EvalInterval(TrainingEstimator.Plan(job.Rows.Count + job.Conversations.Count, s).TotalSteps) },
            ComputeDType = models.ComputeDtype(s.Precision),
            ResumeFrom = job.ResumeFromCheckpoint,
            Device = job.Gpus is [int gpu] ? new TorchSharp.torch.Device(TorchSharp.DeviceType.CUDA, gpu) : null,
            Devices = job.Gpus is { Count: > 1 } gpus ? [.. gpus.Select(i => new TorchSharp.torch.Device(TorchSharp.DeviceType.CUDA, i))] : null,
        };
    }
}
