using FineTune.Engine.Adapters;
using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using FineTune.Engine.Training;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using static TorchSharp.torch;
using EngineProgress = FineTune.Engine.Training.TrainingProgress;
using WebProgress = FineTune.Web.Features.Runs.TrainingProgress;

namespace FineTune.Web.Features.Engine;

/// <summary>
/// Trains a run with FineTune.Engine, the same pipeline as the headless `train` command: tutorial prompt layout,
/// answer-only loss, seeded validation split, NF4 base for QLoRA, checkpoints in checkpoints/, the PEFT adapter
/// (with tokenizer files, model card and loss.csv) in adapter/.
/// </summary>
public sealed class EngineTrainingRunner(EngineModels models, ILoggerFactory loggers) : ITrainingRunner
{
    public const string CheckpointsFolder = RunStore.CheckpointsFolder;

    public async Task<TrainingOutcome> RunAsync(TrainingJob job, IProgress<WebProgress> progress, CancellationToken cancellationToken)
    {
        string folder = await models.ResolveFolderAsync(job.Settings, cancellationToken);
        // Training blocks its thread for minutes to hours: give it its own.
        return await Task.Factory.StartNew(() => Train(job, folder, progress, cancellationToken),
            cancellationToken, TaskCreationOptions.LongRunning, TaskScheduler.Default);
    }

    private TrainingOutcome Train(TrainingJob job, string folder, IProgress<WebProgress> progress, CancellationToken cancellationToken)
    {
        var s = job.Settings;
        var tokenizer = TokenizerLoader.Load(folder);
        // The tutorial's layout ("### 指令：… ### 回應："), the same PromptTemplate the train and generate commands use.
        var template = PromptTemplate.Create(new PromptTemplateSettings(PromptStyle.Tutorial), tokenizer);
        var examples = TrainingExamples.Build(job.Rows, template, new ExampleOptions(s.MaxSeqLength), loggers.CreateLogger("FineTune.Data"));
        var split = Batching.Split(examples.Examples, s.Seed, s.EvalFraction, TrainingEstimator.MinimumRowsForEval);

        var dtype = models.ComputeDtype(s.Precision);
        bool fourBit = s.Quantization == Quantization.Nf4;
        using var model = models.Load(folder, dtype, fourBit, s.DoubleQuantization);
        var trainable = new CausalLmTraining(model);
        var lora = new LoraSettings(s.LoraR, s.LoraAlpha, s.LoraDropout, s.TargetModules);
        LoraInjector.Attach(trainable.NamedLinears(), lora, seed: s.Seed);

        var options = s.ToTrainingOptions() with
        {
            EvalSteps = split.Validation.Count > 0 ? s.LoggingSteps : 0,
            UseLossScaling = dtype == ScalarType.Float16,
        };
        string checkpoints = Path.Combine(job.OutputDirectory, CheckpointsFolder);
        string baseName = EngineModels.BaseModelName(folder, s);
        var trainer = new LoraTrainer(trainable, lora, baseName, loggers.CreateLogger<LoraTrainer>());
        var result = trainer.Train(split, options, new Forward(progress, checkpoints), cancellationToken, checkpoints, job.ResumeFromCheckpoint);
        cancellationToken.ThrowIfCancellationRequested();

        string adapter = Path.Combine(job.OutputDirectory, ArtifactPackager.AdapterFolder);
        var info = new AdapterRunInfo(baseName, split.Train.Count, split.Validation.Count, lora, options, s.MaxSeqLength, fourBit, "tutorial", result, DateTimeOffset.UtcNow);
        AdapterExport.WriteFolder(adapter, trainable.NamedLinears(), folder, info);
        return new TrainingOutcome(result.FinalTrainLoss, result.FinalEvalLoss, adapter, result.LastCheckpoint);
    }

    /// <summary>Engine progress → the web's, with the newest checkpoint folder once one exists (for resuming).</summary>
    private sealed class Forward(IProgress<WebProgress> target, string checkpoints) : IProgress<EngineProgress>
    {
        private string? _lastCheckpoint;

        public void Report(EngineProgress p)
        {
            string? checkpoint = Directory.Exists(checkpoints) ? Checkpoints.Latest(checkpoints) : null;
            string? changed = checkpoint != _lastCheckpoint ? checkpoint : null;
            _lastCheckpoint = checkpoint;
            target.Report(new WebProgress(p.Step, p.TotalSteps, p.Epoch, p.Loss, p.EvalLoss, p.LearningRate, p.TokensPerSecond,
                p.Elapsed, p.Eta, p.GpuMemoryBytes, changed));
        }
    }
}
