using System.Diagnostics;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using static TorchSharp.torch;

namespace FineTune.Engine.Training;

/// <summary>A base model loaded for fine-tuning, with fresh LoRA adapters attached.</summary>
public sealed class FineTuneModel(CausalLM model, IReadOnlyList<string> adapterLayers, ScalarType computeDType) : IDisposable
{
    public CausalLM Model { get; } = model;

    public CausalLmTraining Trainable { get; } = new(model);

    /// <summary>Names of the linear layers that got an adapter.</summary>
    public IReadOnlyList<string> AdapterLayers { get; } = adapterLayers;

    public ScalarType ComputeDType { get; } = computeDType;

    public void Dispose() => Model.Dispose();
}

/// <summary>
/// The one fine-tuning pipeline: rows → examples (prompt template, answer-only labels) → train/validation split →
/// base model (NF4 for QLoRA) + LoRA → <see cref="LoraTrainer"/> → adapter folder (and merged model). The wizard,
/// the headless `train` command and the benchmark map their inputs to a <see cref="FineTuneJob"/> and call
/// <see cref="RunAsync"/> or <see cref="Run"/>; the same job and seed give the same adapter bytes from each.
/// </summary>
public sealed class FineTunePipeline(ILoggerFactory? loggers = null)
{
    /// <summary>The log category of the pipeline's own messages (what was loaded, how the rows split).</summary>
    public const string LogCategory = "FineTune.Pipeline";

    private readonly ILoggerFactory _loggers = loggers ?? NullLoggerFactory.Instance;

    /// <summary>Runs the job on a thread of its own (training blocks for minutes to hours).</summary>
    public Task<FineTuneOutcome> RunAsync(FineTuneJob job, IProgress<TrainingProgress>? progress, CancellationToken cancellationToken) =>
        Task.Factory.StartNew(() => Run(job, progress, cancellationToken), cancellationToken, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    /// <summary>Runs the job on the calling thread; throws <see cref="OperationCanceledException"/> when cancelled.</summary>
    public FineTuneOutcome Run(FineTuneJob job, IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        var logger = _loggers.CreateLogger(LogCategory);
        // The data first: a bad template or file fails in a second, not after minutes of loading weights.
        var split = Split(job);
        cancellationToken.ThrowIfCancellationRequested();

        var clock = Stopwatch.StartNew();
        using var model = LoadModel(job);
        if (job.InitAdapter is not null) PeftAdapter.Load(job.InitAdapter, model.Trainable.NamedLinears());
        Synchronize(job);
        var loadTime = clock.Elapsed;
        logger.LogInformation("{ModelType}: LoRA r={Rank} on {Layers} layers{Base}, {Train} train / {Validation} validation rows",
            model.Model.Config.ModelType, job.Lora.Rank, model.AdapterLayers.Count,
            job.FourBit ? job.DoubleQuantization ? ", base in NF4 (double quantization)" : ", base in NF4" : "", split.Train.Count, split.Validation.Count);

        var options = job.Training with { UseLossScaling = model.ComputeDType == ScalarType.Float16 };
        string baseModelName = job.BaseModelName ?? PeftAdapter.BaseModelName(job.ModelFolder);
        var trainer = new LoraTrainer(model.Trainable, job.Lora, baseModelName, _loggers.CreateLogger<LoraTrainer>());
        clock.Restart();
        var result = trainer.Train(split, options, progress, cancellationToken, job.CheckpointsFolder, job.ResumeFrom);
        Synchronize(job);
        var trainTime = clock.Elapsed;
        cancellationToken.ThrowIfCancellationRequested();

        if (job.OutputFolder is not null)
        {
            var info = new AdapterRunInfo(job, baseModelName, split.Train.Count, split.Validation.Count, options, model.ComputeDType,
                model.Trainable.GradientCheckpointing, result, DateTimeOffset.UtcNow);
            AdapterExport.WriteFolder(job.OutputFolder, model.Trainable.NamedLinears(), info);
        }
        if (job.MergedFolder is not null)
            AdapterExport.WriteMerged(job.MergedFolder, model.Model, model.Trainable.NamedLinears(), job.ModelFolder);
        return new FineTuneOutcome(result, split.Train.Count, split.Validation.Count, job.OutputFolder, job.MergedFolder,
            model.Trainable.GradientCheckpointing, loadTime, trainTime);
    }

    /// <summary>The job's examples (built from its rows through its prompt template, or given), split for validation by its seed.</summary>
    public DataSplit Split(FineTuneJob job)
    {
        IReadOnlyList<TrainingExample> examples = job.Examples ?? BuildExamples(job).Examples;
        return Batching.Split(examples, job.Training.Seed, job.ValidationFraction);
    }

    /// <summary>Rows → token ids and labels through the job's template (the same PromptTemplate chat and generation use).</summary>
    public ExampleSet BuildExamples(FineTuneJob job)
    {
        var tokenizer = TokenizerLoader.Load(job.ModelFolder);
        var template = PromptTemplate.Create(job.Template, tokenizer);
        return TrainingExamples.Build(job.Rows, template, new ExampleOptions(job.MaxSeqLength, job.AnswerOnlyLoss), _loggers.CreateLogger("FineTune.Data"));
    }

    /// <summary>
    /// The base model in the job's dtype on its device (every linear but lm_head in NF4 for QLoRA, as bitsandbytes
    /// does), with fresh adapters on the job's target modules, seeded by the training seed.
    /// </summary>
    public FineTuneModel LoadModel(FineTuneJob job)
    {
        var dtype = job.ComputeDType ?? ComputeBackend.Current.ComputeDType;
        var model = ModelLoader.Load(job.ModelFolder, new ModelLoadOptions
        {
            Device = job.Device,
            DType = dtype,
            Logger = _loggers.CreateLogger("FineTune.Models"),
            LoadLinearWeight = job.FourBit ? Nf4.QuantizeOnLoad(dtype, job.DoubleQuantization) : null,
        });
        try
        {
            var attached = LoraInjector.Attach(model.NamedLinears(), job.Lora, seed: job.Training.Seed);
            return new FineTuneModel(model, attached, dtype);
        }
        catch
        {
            model.Dispose();
            throw;
        }
    }

    /// <summary>Waits for the device's queued work, so the load and train times are the device's, not the host's.</summary>
    private static void Synchronize(FineTuneJob job)
    {
        if ((job.Device ?? ComputeBackend.Current.Device).type == TorchSharp.DeviceType.CUDA) cuda.synchronize();
    }
}
