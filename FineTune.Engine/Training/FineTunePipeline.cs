using System.Diagnostics;
using System.Runtime.ExceptionServices;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Distributed;
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

    /// <summary>Makes the replicas' group of a data-parallel run (tests: communicators that fail on cue or record aborts).</summary>
    internal Func<IReadOnlyList<Device>, DataParallelGroup> CreateGroup { get; init; } = DataParallelGroup.Create;

    /// <summary>
    /// The total memory of a GPU the job trains on, which automatic gradient checkpointing is decided against; null on the CPU
    /// or when unknown (tests: a GPU's memory for a CPU run). The memory check's own record of the card (<see cref="ModelMemoryCheck.Available"/>).
    /// </summary>
    internal Func<Device, long?> DeviceMemory { get; init; } = device =>
        device.type == TorchSharp.DeviceType.CUDA ? ModelMemoryCheck.Available(device)?.Bytes : null;

    /// <summary>Runs the job on a thread of its own (training blocks for minutes to hours).</summary>
    public Task<FineTuneOutcome> RunAsync(FineTuneJob job, IProgress<TrainingProgress>? progress, CancellationToken cancellationToken) =>
        Task.Factory.StartNew(() => Run(job, progress, cancellationToken), cancellationToken, TaskCreationOptions.LongRunning, TaskScheduler.Default);

    /// <summary>Runs the job on the calling thread (on one thread per device when data-parallel); throws <see cref="OperationCanceledException"/> when cancelled.</summary>
    public FineTuneOutcome Run(FineTuneJob job, IProgress<TrainingProgress>? progress = null, CancellationToken cancellationToken = default)
    {
        // The data first: a bad template or file fails in a second, not after minutes of loading weights.
        var split = Split(job);
        cancellationToken.ThrowIfCancellationRequested();
        job = WithCheckpointing(job, split, _loggers.CreateLogger(LogCategory));
        return job.IsDataParallel
            ? RunDataParallel(job, job.Devices!, split, progress, cancellationToken)
            : Train(job, split, replica: null, progress, cancellationToken);
    }

    /// <summary>
    /// One replica per device, each on a thread of its own (see <see cref="DataParallelGroup"/> for why threads): each
    /// loads the model on its device and trains its share of every step; rank 0 reports progress and writes the
    /// checkpoints and the adapter. When a replica fails, the group aborts the others' collectives and the first
    /// failure is what the caller sees.
    /// </summary>
    private FineTuneOutcome RunDataParallel(FineTuneJob job, IReadOnlyList<Device> devices, DataSplit split,
        IProgress<TrainingProgress>? progress, CancellationToken cancellationToken)
    {
        using var group = CreateGroup(devices);
        _loggers.CreateLogger(LogCategory).LogInformation("Data parallel on {Count} devices ({Devices}); each optimizer step's rows are shared out",
            devices.Count, string.Join(", ", devices));
        var replicas = devices.Select((device, rank) => Task.Factory.StartNew(() =>
        {
            try
            {
                var replica = group.Join(rank);
                var outcome = Train(job with { Device = device, Devices = null }, split, replica, progress, cancellationToken);
                group.Leave(rank);
                return outcome;
            }
            catch (Exception e)
            {
                group.Fail(e);
                throw;
            }
        }, CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default)).ToArray();
        try
        {
            Task.WaitAll(replicas);
        }
        catch (AggregateException) when (group.FirstFailure is { } first)
        {
            ExceptionDispatchInfo.Capture(first).Throw();
        }
        return replicas[0].Result with
        {
            DeviceCount = devices.Count,
            PhaseTimes = job.TimeStepPhases ? [.. replicas.SelectMany(r => r.Result.PhaseTimes ?? [])] : null,
        };
    }

    /// <summary>Loads, trains and (on the main replica) exports: the single-device run, or one replica of a data-parallel one.</summary>
    private FineTuneOutcome Train(FineTuneJob job, DataSplit split, DataParallelReplica? replica, IProgress<TrainingProgress>? progress, CancellationToken cancellationToken)
    {
        bool main = replica?.IsMain ?? true;
        var logger = main ? _loggers.CreateLogger(LogCategory) : NullLogger.Instance;
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
        var phaseClock = job.TimeStepPhases ? new StepPhaseClock(job.Device ?? ComputeBackend.Current.Device) : null;
        var trainer = new LoraTrainer(model.Trainable, job.Lora, baseModelName, main ? _loggers.CreateLogger<LoraTrainer>() : null) { Replica = replica, PhaseClock = phaseClock };
        clock.Restart();
        // TensorBoard event files beside loss.csv in the adapter folder, written as the run goes (tensorboard --logdir watches live).
        using var tensorBoard = main && job.OutputFolder is not null ? new TensorBoardLog(Path.Combine(job.OutputFolder, TensorBoardLog.FolderName), progress) : null;
        var result = trainer.Train(split, options, main ? (IProgress<TrainingProgress>?)tensorBoard ?? progress : null, cancellationToken, main ? job.CheckpointsFolder : null, job.ResumeFrom);
        Synchronize(job);
        var trainTime = clock.Elapsed;
        cancellationToken.ThrowIfCancellationRequested();

        if (main && job.OutputFolder is not null)
        {
            var info = new AdapterRunInfo(job, baseModelName, split.Train.Count, split.Validation.Count, options, model.ComputeDType,
                model.Trainable.GradientCheckpointing, result, DateTimeOffset.UtcNow);
            AdapterExport.WriteFolder(job.OutputFolder, model.Trainable.NamedLinears(), info);
        }
        if (main && job.MergedFolder is not null)
            AdapterExport.WriteMerged(job.MergedFolder, model.Model, model.Trainable.NamedLinears(), job.ModelFolder);
        return new FineTuneOutcome(result, split.Train.Count, split.Validation.Count, main ? job.OutputFolder : null, main ? job.MergedFolder : null,
            model.Trainable.GradientCheckpointing, loadTime, trainTime) { PhaseTimes = phaseClock is null ? null : [phaseClock.Summary(replica?.Rank ?? 0)] };
    }

    /// <summary>
    /// Measures the job on its device (the first of a data-parallel job's) and projects the run's time from its real
    /// examples: loads the model as the run does, trains a warm-up step and then rounds of <paramref name="steps"/> timed optimizer steps
    /// with the trainer's own Train (the run's longest and shortest full steps of the first epoch, then its first ones) until two
    /// rounds agree, and times validation batches with the trainer's own Evaluate, in rounds the same way. Nothing is written; the adapters are thrown away.
    /// A data-parallel job's steps are timed as its first replica trains them, its share of each (<see cref="LoraTrainer.Share"/>),
    /// on the first device alone, and projected over each step's largest share and the validation batches the first replica
    /// evaluates (<see cref="RunWorkload.Of"/>): the gradients' all-reduce is not timed (LoRA's gradients, tens of MB a step).
    /// </summary>
    public TrainingTimeEstimate EstimateTime(FineTuneJob job, int steps = 3, CancellationToken cancellationToken = default)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(steps, 1);
        var split = Split(job);
        if (split.Train.Count == 0) throw new ArgumentException("There are no training rows to measure with.", nameof(job));
        job = WithCheckpointing(job, split, NullLogger.Instance); // the steps timed as the run will take them
        int replicas = job.Devices?.Count ?? 1;
        StepShare? share = replicas > 1 ? new StepShare(0, replicas) : null;
        job = job with { Device = job.Devices?[0] ?? job.Device, Devices = null };
        var clock = Stopwatch.StartNew();
        using var model = LoadModel(job);
        Synchronize(job);
        var loadTime = clock.Elapsed;
        var options = job.Training with { UseLossScaling = model.ComputeDType == ScalarType.Float16 };
        // Graphs as the run will have them: the probe repeats its steps, which would give it graphs for shapes the run meets once.
        var trainer = new LoraTrainer(model.Trainable, job.Lora, "time-estimate")
        {
            Graphs = LoraTrainer.GraphPlanOf(split.Train, options, share),
            BudgetFrom = (split.Train, options),                                // its long micro-batches recompute what the run's will
            Share = share,
        };
        var device = job.Device ?? ComputeBackend.Current.Device;

        // The steps to time, as a training list of their own taken in file order: every step then is one of the run's windows.
        // They are trained in rounds, after one warm-up step, until two rounds agree: the first steps of a process run code
        // the JIT has not optimized yet (4x slower steps on the fixture), and a GPU's first steps fill its caches.
        var windows = LoraTrainer.EpochWindows(split.Train, options, epoch: 0);
        int fullWindow = options.BatchSize * options.GradientAccumulationSteps;
        var full = windows.Where(w => w.Sum(b => b.Length) == fullWindow).ToList();
        var timed = (full.Count == 0 ? windows
            : [.. full.OrderByDescending(w => RunWorkload.Tokens(split.Train, w)).Take(1), .. full.OrderBy(w => RunWorkload.Tokens(split.Train, w)).Take(1), .. full])
            .Distinct().Take(steps).ToList();
        var chosen = new[] { windows[0] }.Concat(Enumerable.Repeat(timed, MaxRounds).SelectMany(round => round)).ToList();
        var probeTrain = chosen.SelectMany(w => w.SelectMany(b => b)).Select(i => split.Train[i]).ToList();
        var probeOptions = options with { Shuffle = false, Epochs = 1, StopAfterSteps = 0, LoggingSteps = 1, EvalSteps = 0, SaveSteps = 0, WarmupSteps = 0, WarmupRatio = 0 };
        var probeWindows = LoraTrainer.EpochWindows(probeTrain, probeOptions, epoch: 0);
        using var settled = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
        // A step's tokens as the trainer took them: the share's where it trains one (a window's share of the probe's rows is
        // the same rows as of the run's window: the same rows in the same order).
        long TimedTokens(List<int[]> window) => RunWorkload.Tokens(probeTrain, share?.Of(window, probeTrain, probeOptions.Layout) ?? window);
        var rounds = new RoundRecorder(timed.Count, (step, elapsed) => new TimedWork(TimedTokens(probeWindows[step - 1]), elapsed), settled);
        try
        {
            trainer.Train(new DataSplit(probeTrain, []), probeOptions, rounds, settled.Token);
        }
        catch (OperationCanceledException) when (!cancellationToken.IsCancellationRequested)
        {
            // two rounds agreed
        }
        var trainSteps = rounds.LastRound;

        List<TimedWork> evaluationBatches = [];
        TimeSpan evaluationCall = TimeSpan.Zero;
        var validation = split.Validation;
        if (validation.Count > 0)
        {
            var batches = LoraTrainer.EvaluationBatches(validation, options).ToList();
            long TokensOf(int[] batch) => batch.Sum(i => (long)validation[i].Length);
            trainer.Evaluate([.. batches[0].Select(i => validation[i])], options, device, cancellationToken); // warm-up
            var timedBatches = new[] { batches.MaxBy(TokensOf)!, batches.MinBy(TokensOf)! }.Concat(batches).Distinct().Take(Math.Max(3, 2 * steps)).ToList();
            double? previousRate = null;
            for (int round = 0; round < MaxRounds; round++)
            {
                evaluationBatches = [.. timedBatches.Select(batch =>
                {
                    var batchClock = Stopwatch.StartNew();
                    trainer.Evaluate([.. batch.Select(i => validation[i])], options, device, cancellationToken);
                    return new TimedWork(TokensOf(batch), batchClock.Elapsed);
                })];
                if (RoundsAgree(evaluationBatches, ref previousRate)) break;
            }
            // The same batches in one call, as a run evaluates them: what the separate calls took beyond it is the per-call
            // cost, paid once per evaluation in a run; each batch's own cost is net of it.
            if (timedBatches.Count > 1)
            {
                var together = Stopwatch.StartNew();
                trainer.Evaluate([.. timedBatches.SelectMany(batch => batch).Select(i => validation[i])], options, device, cancellationToken);
                double separate = evaluationBatches.Sum(b => b.Time.TotalSeconds);
                evaluationCall = TimeSpan.FromSeconds(Math.Clamp((separate - together.Elapsed.TotalSeconds) / (timedBatches.Count - 1), 0,
                    evaluationBatches.Min(b => b.Time.TotalSeconds)));
                var call = evaluationCall;
                evaluationBatches = [.. evaluationBatches.Select(b => b with { Time = b.Time - call })];
            }
        }
        var measurement = new SpeedMeasurement(device.ToString(), loadTime, trainSteps, evaluationBatches, evaluationCall);
        var workload = RunWorkload.Of(split, options, replicas);
        return new TrainingTimeEstimate(measurement, workload, measurement.Project(workload));
    }

    /// <summary>
    /// Whether the job recomputes each layer in backward (<see cref="TrainingMemory.ResolveCheckpointing"/>): as set, or for
    /// auto against the smallest GPU of the run (each replica of a data-parallel run holds the whole model); on the CPU,
    /// on with a 4-bit base.
    /// </summary>
    public CheckpointingChoice ResolveCheckpointing(FineTuneJob job, DataSplit split)
    {
        IReadOnlyList<Device> devices = job.IsDataParallel ? job.Devices! : [job.Device ?? ComputeBackend.Current.Device];
        var memories = job.Training.GradientCheckpointing is null ? devices.Select(DeviceMemory).ToList() : [];
        long? smallest = memories.Count > 0 && memories.All(m => m is not null) ? memories.Min() : null;
        var facts = smallest is null ? null : ModelFacts.Of(job.ModelFolder);
        return TrainingMemory.ResolveCheckpointing(facts, MemoryQueryOf(job, split), smallest);
    }

    /// <summary>The job with its gradient checkpointing decided, for the trainer (which reads the option first) and the adapter's record.</summary>
    private FineTuneJob WithCheckpointing(FineTuneJob job, DataSplit split, ILogger logger)
    {
        var choice = ResolveCheckpointing(job, split);
        logger.LogInformation("{Checkpointing}", choice);
        return job with { Training = job.Training with { GradientCheckpointing = choice.On, CheckpointedShare = choice.On ? 0 : choice.Share } };
    }

    /// <summary>
    /// What the job asks of a device's memory: the wizard's estimate of the same settings (batch rows of at most MaxSeqLength
    /// tokens); examples given as tokens (the benchmark's) are not cut to MaxSeqLength, so their longest bounds a row instead.
    /// </summary>
    private static MemoryQuery MemoryQueryOf(FineTuneJob job, DataSplit split) => new(
        job.Lora, job.Training.BatchSize,
        job.Examples is null ? job.MaxSeqLength : split.Train.Select(e => e.Length).DefaultIfEmpty(0).Max(),
        job.FourBit, job.DoubleQuantization, job.Training.GradientCheckpointing,
        ComputeBytes: (job.ComputeDType ?? ComputeBackend.Current.ComputeDType) == ScalarType.Float32 ? 4 : 2,
        LossChunkSize: job.Training.LossChunkSize);

    /// <summary>Rounds of timed steps (or validation batches) at most, when no two agree.</summary>
    private const int MaxRounds = 5;

    /// <summary>
    /// Times the trainer's steps as it reports them (on the trainer's thread, unlike Progress&lt;T&gt;), skipping the warm-up
    /// step, in rounds of <paramref name="roundSteps"/>; stops training once a round's seconds per token is within 15 % of the
    /// round before.
    /// </summary>
    private sealed class RoundRecorder(int roundSteps, Func<int, TimeSpan, TimedWork> work, CancellationTokenSource stop) : IProgress<TrainingProgress>
    {
        private readonly List<TimedWork> _steps = [];
        private TimeSpan _last;
        private double? _previousRate;

        public IReadOnlyList<TimedWork> LastRound { get; private set; } = [];

        public void Report(TrainingProgress value)
        {
            var time = value.Elapsed - _last;
            _last = value.Elapsed;
            if (value.Step == 1)
            {
                LastRound = [work(1, time)]; // only kept when it is the only step
                return;
            }
            _steps.Add(work(value.Step, time));
            if (_steps.Count % roundSteps != 0) return;
            LastRound = _steps[^roundSteps..];
            if (RoundsAgree(LastRound, ref _previousRate)) stop.Cancel();
        }
    }

    /// <summary>True when this round's seconds per token is within 15 % of the previous round's (which becomes this one's).</summary>
    private static bool RoundsAgree(IReadOnlyList<TimedWork> round, ref double? previousRate)
    {
        double rate = round.Sum(s => s.Time.TotalSeconds) / Math.Max(1, round.Sum(s => s.Tokens));
        bool agree = previousRate is double previous && Math.Abs(rate - previous) <= 0.15 * previous;
        previousRate = rate;
        return agree;
    }

    /// <summary>The job's examples (built from its rows through its prompt template, or given), split for validation by its seed.</summary>
    public DataSplit Split(FineTuneJob job)
    {
        IReadOnlyList<TrainingExample> examples = job.Examples ?? BuildExamples(job).Examples;
        return Batching.Split(examples, job.Training.Seed, job.ValidationFraction);
    }

    /// <summary>
    /// Rows and conversations → token ids and labels through the job's template (the same PromptTemplate chat and
    /// generation use); conversations with the loss on their assistant turns.
    /// </summary>
    public ExampleSet BuildExamples(FineTuneJob job)
    {
        var tokenizer = TokenizerLoader.Load(job.ModelFolder);
        var template = PromptTemplate.Create(job.Template, tokenizer);
        var options = new ExampleOptions(job.MaxSeqLength, job.AnswerOnlyLoss);
        var logger = _loggers.CreateLogger("FineTune.Data");
        if (job.Conversations.Count == 0) return TrainingExamples.Build(job.Rows, template, options, logger);
        var chats = TrainingExamples.Build(job.Conversations, template, options, logger);
        if (job.Rows.Count == 0) return chats;
        var rows = TrainingExamples.Build(job.Rows, template, options, logger);
        return new ExampleSet([.. rows.Examples, .. chats.Examples], rows.TruncatedCount + chats.TruncatedCount, [.. rows.DroppedSourceRows, .. chats.DroppedSourceRows]);
    }

    /// <summary>
    /// The base model in the job's dtype on its device (every linear but lm_head in NF4 for QLoRA, as bitsandbytes
    /// does), with fresh adapters on the job's target modules, seeded by the training seed.
    /// </summary>
    public FineTuneModel LoadModel(FineTuneJob job)
    {
        var dtype = job.ComputeDType ?? ComputeBackend.Current.ComputeDType;
        var model = ModelLoader.Load(job.ModelFolder,
            ModelLoadOptions.Base(dtype, job.FourBit, job.DoubleQuantization, job.Device, _loggers.CreateLogger("FineTune.Models")));
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
        var device = job.Device ?? ComputeBackend.Current.Device;
        if (device.type == TorchSharp.DeviceType.CUDA) cuda.synchronize(device);
    }
}
