using FineTune.Engine.Backend;
using System.Diagnostics;
using System.Runtime.InteropServices;
using FineTune.Engine.Adapters;
using FineTune.Engine.Data;
using FineTune.Engine.Distributed;
using FineTune.Engine.Kernels;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FineTune.Engine.Training;

/// <summary>
/// Trains the LoRA adapters of a model like HF Trainer + PEFT: AdamW, LambdaLR schedule with warmup,
/// gradient accumulation with the loss normalised by the tokens of the whole accumulation window,
/// clipping, checkpoints and resume. The loss is lm_head + cross-entropy at answer positions only,
/// in chunks, in fp32. The adapters' weights and gradients live in flat buffers (<see cref="FlatAdamW"/>), so
/// zeroing, unscaling, clipping and the AdamW update are a few kernels per step, and the host reads the
/// device once per optimizer step (loss and gradient norm together).
/// </summary>
public sealed class LoraTrainer(ITrainableCausalLM model, LoraSettings settings, string baseModelName, ILogger? logger = null)
{
    private readonly ILogger _logger = logger ?? NullLogger.Instance;

    /// <summary>
    /// Set when this trainer is one replica of a data-parallel run: it trains on its share of every optimizer step's rows,
    /// and the gradients (already divided by the whole step's target count) are summed over the replicas before clipping
    /// and the update, so every replica takes the single-device step. Null: one device, today's path.
    /// </summary>
    public DataParallelReplica? Replica { get; init; }

    /// <summary>
    /// Set where this trainer trains one replica's share of every optimizer step with no other replica (the time estimate of
    /// a data-parallel run times its first replica's share on one device): the share's micro-batches, nothing summed over
    /// replicas. Null: <see cref="Replica"/>'s share, or the whole step.
    /// </summary>
    public StepShare? Share { get; init; }

    /// <summary>The part of every optimizer step this trainer trains; null: all of it.</summary>
    private StepShare? ShareOfSteps => Replica?.Share ?? Share;

    /// <summary>
    /// The micro-batch shapes that get a CUDA graph and whether packed rows are padded for them; null: the training rows'
    /// (<see cref="GraphPlanOf"/>). The time estimate passes the run's own, since its probe repeats a few steps and would
    /// otherwise get graphs the run does not.
    /// </summary>
    public GraphPlan? Graphs { get; init; }

    /// <summary>
    /// The rows and options whose micro-batches set the long-micro-batch budget (<see cref="LongMicroBatches"/>); null: the
    /// training rows and options given to <see cref="Train"/>. The time estimate passes the run's own, as with
    /// <see cref="Graphs"/>: its probe's few steps would set another budget, or none.
    /// </summary>
    public (IReadOnlyList<TrainingExample> Rows, TrainingOptions Options)? BudgetFrom { get; init; }

    /// <summary>Diagnostics: times each step's phases with the device synchronized (slower; the benchmark's --step-phases).</summary>
    public StepPhaseClock? PhaseClock { get; init; }

    /// <summary>
    /// Runs (or resumes) training. <paramref name="checkpointsFolder"/> receives checkpoint-N folders when
    /// SaveSteps &gt; 0; <paramref name="resumeFrom"/> is a checkpoint folder to continue from.
    /// </summary>
    public TrainingResult Train(DataSplit data, TrainingOptions options, IProgress<TrainingProgress>? progress = null,
        CancellationToken cancellationToken = default, string? checkpointsFolder = null, string? resumeFrom = null)
    {
        options.Validate();
        if (data.Train.Count == 0) throw new ArgumentException("There are no training rows left (all were empty or dropped). Check the data file.", nameof(data));
        var trainable = model.Module.parameters().Where(p => p.requires_grad).ToList();
        if (trainable.Count == 0) throw new InvalidOperationException("The model has no trainable parameters: attach LoRA adapters first (LoraInjector.Attach).");

        var device = trainable[0].device;
        var adapterLayers = model.NamedLinears().Select(l => l.Layer).Where(l => l.HasAdapter).ToList();
        bool quantized = model.NamedLinears().Any(l => l.Layer.IsQuantized);
        bool checkpointing = Checkpointing(model, options);
        if (model.GradientCheckpointing != checkpointing) model.GradientCheckpointing = checkpointing;
        int stepsPerEpoch = options.StepsPerEpoch(data.Train.Count);
        int totalSteps = options.TotalSteps(data.Train.Count);
        var schedule = new LearningRateSchedule(options.Schedule, options.WarmupStepCount(totalSteps), totalSteps);
        using var optimizer = new FlatAdamW(trainable, options.LearningRate, options.AdamBeta1, options.AdamBeta2, options.AdamEpsilon, options.WeightDecay);
        var scaler = options.UseLossScaling ? new LossScaler() : null;

        var history = new List<StepRecord>();
        int startStep = 0;
        if (resumeFrom is not null)
        {
            var state = Checkpoints.Restore(resumeFrom, model, optimizer);
            if (state.TrainRows != data.Train.Count || state.BatchSize != options.BatchSize || state.GradientAccumulationSteps != options.GradientAccumulationSteps || state.Seed != options.Seed)
                throw new CheckpointException($"The checkpoint '{resumeFrom}' was made with {state.TrainRows} rows, batch {state.BatchSize} × {state.GradientAccumulationSteps}, seed {state.Seed}; this run has {data.Train.Count} rows, batch {options.BatchSize} × {options.GradientAccumulationSteps}, seed {options.Seed}. Resume with the same data and settings, or start a new run.");
            startStep = state.GlobalStep;
            history.AddRange(state.History);
            if (scaler is not null && state.LossScale is double s) scaler.Scale = s;
            _logger.LogInformation("Resuming from {Checkpoint} at step {Step} of {Total}", resumeFrom, startStep, totalSteps);
        }
        // Every replica starts from rank 0's adapter (the same seed drew the same one; the broadcast makes sure of it).
        Replica?.Communicator.Broadcast(optimizer.Values);
        // bf16/fp16 copies of the adapters, made once per optimizer step (after the restore and the broadcast above).
        using var workingCopies = AdapterWorkingCopies.For(optimizer, adapterLayers);
        using var microBatch = new MicroBatchTensors(device);
        // Not with the phase clock: its synchronizations cannot be captured.
        // Suspended graphs (op by op, for comparisons) keep the plan's micro-batch shapes: the same job without the capture.
        var plan = CudaGraphs.Available(device) && PhaseClock is null ? Graphs ?? GraphPlanOf(data.Train, options, ShareOfSteps) : null;
        using var graphs = plan is not null && CudaGraphs.On(device) ? new MicroBatchGraphs(CudaKernels.Ordinal(device)!.Value, plan.Shapes) : null;
        // Padded packed rows go to the smallest graph shape that holds them (with graphs suspended, the same shapes op by op).
        _padTo = plan?.PadPackedRows != true ? null : graphs is not null ? graphs.ShapeFor : bucket => MicroBatchGraphs.SmallestHolding(plan.Shapes, bucket);
        // Micro-batches longer than most checkpoint part of their layers (set per micro-batch in ForwardBackward).
        _longBatchBudget = null;
        _runShare = checkpointing ? 0 : options.CheckpointedShare;
        if (!checkpointing && options.CheckpointLongMicroBatches)
        {
            var (budgetRows, budgetOptions) = BudgetFrom ?? (data.Train, options);
            var tokensAsRun = MicroBatchesOf(budgetRows, budgetOptions, ShareOfSteps, EpochsOf(budgetOptions))
                .Select(indices => TokensAsRun(budgetRows, indices, budgetOptions.Layout)).ToList();
            _longBatchBudget = LongMicroBatches.Budget(tokensAsRun, options.LongMicroBatchPercentile);
            if (_longBatchBudget is long budget)
                _logger.LogInformation("Long micro-batches: {Count} of {Total} above {Budget} tokens checkpoint part of their layers, the longest ({Longest} tokens) {Share:P0}",
                    tokensAsRun.Count(t => t > budget), tokensAsRun.Count, budget, tokensAsRun.Max(), LongMicroBatches.CheckpointedShare(tokensAsRun.Max(), budget, _runShare));
        }
        // TorchSharp's custom autograd functions (the NF4 matmul, checkpointed layers) keep their inputs reachable
        // from managed contexts that only the garbage collector releases; without a collection per step a QLoRA
        // run's GPU memory grew with every step (measured on an H200: 97 GB for a 0.5B model). Dense LoRA does not need
        // it, unless long micro-batches checkpoint layers.
        var collector = quantized || checkpointing || _longBatchBudget is not null || _runShare > 0 ? new StepCollector() : null;

        string? lastCheckpoint = null;
        var clock = Stopwatch.StartNew();
        long tokensSeen = 0;
        int orderEpoch = -1;
        IReadOnlyList<List<int[]>> windows = [];
        double lossSinceLog = 0;
        double? lastLoggedLoss = null; // the one definition of "the loss" shown anywhere: HF Trainer's logged mean since the previous log
        int stepsSinceLog = 0;
        bool graphsOffLogged = false;
        model.Module.train();
        // Padded packed rows: every shape's graph before the first step, the largest first (MicroBatchGraphs.CaptureAll).
        if (_padTo is not null && graphs is not null)
        {
            graphs.CaptureAll(shape => Batching.Placeholder(shape, device),
                b => ForwardBackward(b, microBatch, scaler is not null, options.LossChunkSize, workingCopies),
                () => microBatch.DropoutSeed is { } seed ? DropoutDraws.Begin(seed, 0) : null);
            // The captures ran the managed autograd functions; their contexts go now, since steps that only replay do not collect.
            collector?.AfterStep(force: true);
        }
        try
        {
            for (int step = startStep; step < totalSteps; step++)
            {
                if (Replica is null) cancellationToken.ThrowIfCancellationRequested();
                int epoch = step / stepsPerEpoch, stepInEpoch = step % stepsPerEpoch;
                if (epoch != orderEpoch)
                {
                    windows = EpochWindows(data.Train, options, epoch);
                    orderEpoch = epoch;
                }
                var window = windows[stepInEpoch];

                // Dropout masks depend on (seed, step) alone, so a resumed run draws the same ones. Replicas seed once for
                // all at the step barrier, which also stops them all at the same step when the run is cancelled.
                int stepSeed = options.Seed + step;
                if (Replica is null) SeedStep(stepSeed, device);
                else Replica.BeginStep(cancellationToken, () => SeedStep(stepSeed, device));
                // A TorchSharp Generator lives on the CPU; on CUDA the device's default generator, seeded just above, draws the masks.
                using var dropoutGenerator = device.type == DeviceType.CPU ? new Generator((ulong)(options.Seed + step), device) : null;
                foreach (var layer in adapterLayers) layer.DropoutGenerator = dropoutGenerator;
                double lr = options.LearningRate * schedule.Factor(step);
                optimizer.LearningRate = lr;

                var (loss, gradNorm, tokens, skipped, allReplayed) = Step(step, window, data.Train, options, optimizer, workingCopies, scaler, microBatch, graphs, cancellationToken);
                bool last = step + 1 == totalSteps;
                if (graphs?.Failure is { } graphsOff && !graphsOffLogged)
                {
                    _logger.LogWarning("Training continues without CUDA graphs: a capture failed ({Reason}).", graphsOff);
                    graphsOffLogged = true;
                }
                // A step whose micro-batches all replayed graphs ran no managed autograd function: nothing for a collection to free.
                if (!allReplayed || last) collector?.AfterStep(force: last);
                tokensSeen += tokens;
                double epochReached = (double)(step + 1) / stepsPerEpoch;
                double? evalLoss = null;
                if (data.Validation.Count > 0 && options.EvaluatesAfter(step + 1, totalSteps, stepsPerEpoch))
                    evalLoss = Evaluate(data.Validation, options, device, cancellationToken);

                // Logged like HF Trainer (transformers 5.17, checked against its log): the rate this step used.
                double loggedLr = lr;
                history.Add(new StepRecord(step + 1, Math.Round(epochReached, 4), loss, loggedLr, gradNorm, evalLoss));
                if (skipped) _logger.LogWarning("Step {Step}: fp16 gradients overflowed; the step was skipped and the loss scale lowered to {Scale}", step + 1, scaler!.Scale);
                lossSinceLog += loss;
                stepsSinceLog++;

                string? savedCheckpoint = null;
                if (checkpointsFolder is not null && options.SaveSteps > 0 && ((step + 1) % options.SaveSteps == 0 || last))
                {
                    var state = new CheckpointState(step + 1, totalSteps, options.Seed, data.Train.Count, options.BatchSize,
                        options.GradientAccumulationSteps, options.Epochs, history, scaler?.Scale);
                    savedCheckpoint = lastCheckpoint = Checkpoints.Save(checkpointsFolder, model, optimizer, settings, baseModelName, state, options.SaveTotalLimit);
                }
                // Reported after the save, so a checkpoint path in a report names a folder that is already complete.
                bool logged = (step + 1) % options.LoggingSteps == 0 || last || evalLoss is not null;
                if (logged || savedCheckpoint is not null)
                {
                    var elapsed = clock.Elapsed;
                    int done = step + 1 - startStep;
                    var eta = TimeSpan.FromSeconds(elapsed.TotalSeconds / Math.Max(1, done) * (totalSteps - step - 1));
                    // Only where someone listens: an NVML call per step on every replica (and in benchmarks) is host time for nothing.
                    long? gpuMemory = progress is not null && device.type == DeviceType.CUDA ? GpuMemory.UsedBytes(device) : null;
                    progress?.Report(logged
                        ? new TrainingProgress(step + 1, totalSteps, epochReached, lossSinceLog / stepsSinceLog, evalLoss, loggedLr, gradNorm,
                            tokensSeen / Math.Max(1e-9, elapsed.TotalSeconds), elapsed, eta, gpuMemory, savedCheckpoint)
                        : new TrainingProgress(step + 1, totalSteps, epochReached, Elapsed: elapsed, Eta: eta, GpuMemoryBytes: gpuMemory, CheckpointPath: savedCheckpoint));
                    if (logged)
                    {
                        lastLoggedLoss = lossSinceLog / stepsSinceLog;
                        lossSinceLog = 0;
                        stepsSinceLog = 0;
                    }
                }
                if (options.StopAfterSteps > 0 && step + 1 - startStep >= options.StopAfterSteps && !last)
                    return Result(history, totalSteps, completed: false, lastCheckpoint, lastLoggedLoss);
            }
        }
        finally
        {
            if (graphs is not null)
                _logger.LogInformation("CUDA graphs: {Replays} micro-batches replayed from {Captures} captured shapes{Failure}; GPU memory {Memory}; host between steps {Gap}",
                    graphs.Replays, graphs.Captures, graphs.Failure is { } f ? $"; off after a failed capture ({f})" : "", graphs.MemoryTrace, _hostGap.Summary);
            foreach (var layer in adapterLayers) layer.DropoutGenerator = null;
            model.CheckpointedShare = 0;
            model.Module.eval();
        }
        return Result(history, totalSteps, completed: true, lastCheckpoint, lastLoggedLoss);
    }

    /// <summary>
    /// The micro-batches (row indices) of each optimizer step of one epoch, in the order training takes them: the epoch's
    /// seeded order made into batches, <see cref="TrainingOptions.GradientAccumulationSteps"/> batches a step (the last
    /// step of an epoch may have fewer). Time estimates project from the same windows.
    /// </summary>
    public static IReadOnlyList<List<int[]>> EpochWindows(IReadOnlyList<TrainingExample> train, TrainingOptions options, int epoch)
    {
        var order = Batching.EpochOrder(train.Count, options.Seed, epoch, options.Shuffle);
        var batches = Batching.MakeBatches(train, order, options.BatchSize, options.Layout);
        return [.. batches.Chunk(options.GradientAccumulationSteps).Select(window => window.ToList())];
    }

    /// <summary>The micro-batches (row indices) of the run's first <paramref name="epochs"/> epochs, each step's <paramref name="share"/> (all of it on one device).</summary>
    private static IEnumerable<int[]> MicroBatchesOf(IReadOnlyList<TrainingExample> train, TrainingOptions options, StepShare? share, int epochs) =>
        Enumerable.Range(0, epochs)
            .SelectMany(epoch => EpochWindows(train, options, epoch))
            .SelectMany(window => share?.Of(window, train, options.Layout) ?? window);

    /// <summary>The epochs a run starts: a fractional last epoch is one more.</summary>
    private static int EpochsOf(TrainingOptions options) => Math.Max(1, (int)Math.Ceiling(options.Epochs));

    /// <summary>
    /// The micro-batch shapes of a run on <paramref name="train"/> that get a CUDA graph (from a replica's share of each
    /// step): those that repeat as they come in the first epoch (<see cref="MicroBatchGraphs.RepeatingShapes"/>), or with
    /// <paramref name="padPackedRows"/> the shapes padded packed rows go to (<see cref="MicroBatchGraphs.PaddedShapes"/>),
    /// from every epoch's micro-batches: each epoch packs other rows together (its own shuffle), and one that no shape
    /// holds would run without a graph, its memory beside the graphs' pool.
    /// </summary>
    public static IReadOnlySet<BatchShape> GraphShapesOf(IReadOnlyList<TrainingExample> train, TrainingOptions options, StepShare? share = null,
        bool padPackedRows = false)
    {
        var microBatches = MicroBatchesOf(train, options, share, padPackedRows ? EpochsOf(options) : 1)
            .Select(indices => Batching.ShapeOf(train, indices, options.Layout, padPackedRows));
        return padPackedRows ? MicroBatchGraphs.PaddedShapes(microBatches) : MicroBatchGraphs.RepeatingShapes(microBatches);
    }

    /// <summary>
    /// The shapes of a run's micro-batches that get CUDA graphs: as the rows come where they repeat (fixed-length rows), else,
    /// for packed rows, padded to bucket lengths (<see cref="Batching.Collate"/>'s padTo), all captured before the first step
    /// (<see cref="MicroBatchGraphs.CaptureAll"/>). Packed Q&amp;A rows rarely repeat a shape, and a step of them issues
    /// thousands of ops at 8-11 us of host time each: on one H200 the 7B Q&amp;A step (8 rows, ~1,400 tokens) took 111-116 ms
    /// op by op against 87 ms of kernels (Nsight Compute), so even a 16-bit run on one GPU waits for the host.
    /// </summary>
    public static GraphPlan GraphPlanOf(IReadOnlyList<TrainingExample> train, TrainingOptions options, StepShare? share = null)
    {
        var shapes = GraphShapesOf(train, options, share);
        if (shapes.Count > 0 || options.Layout != BatchLayout.Packed) return new(shapes, PadPackedRows: false);
        var padded = GraphShapesOf(train, options, share, padPackedRows: true);
        return padded.Count > 0 ? new(padded, PadPackedRows: true) : new(shapes, PadPackedRows: false);
    }

    /// <summary>
    /// Whether a run of <paramref name="model"/> recomputes each layer in backward: the option, which FineTunePipeline sets
    /// from the GPU's memory (<see cref="TrainingMemory.ResolveCheckpointing"/>); where it is left to auto (a trainer used on
    /// its own), the rule without device memory.
    /// </summary>
    public static bool Checkpointing(ITrainableCausalLM model, TrainingOptions options) =>
        options.GradientCheckpointing ?? TrainingMemory.WithoutDeviceMemory(model.NamedLinears().Any(l => l.Layer.IsQuantized));

    /// <summary>Where this run pads packed rows (<see cref="GraphPlan.PadPackedRows"/>): the shape a micro-batch's bucket shape is padded to, if any.</summary>
    private Func<BatchShape, BatchShape?>? _padTo;

    /// <summary>The run's <see cref="LongMicroBatches.Budget"/> in tokens; null: no micro-batch checkpoints more layers than the run's share.</summary>
    private long? _longBatchBudget;

    /// <summary>The share of layers every micro-batch checkpoints (<see cref="TrainingOptions.CheckpointedShare"/>; 0 with checkpointing on: all are).</summary>
    private double _runShare;

    /// <summary>The tokens of the micro-batch <paramref name="indices"/> make as Step collates it: padded to its graph's shape where one holds it.</summary>
    private long TokensAsRun(IReadOnlyList<TrainingExample> rows, int[] indices, BatchLayout layout)
    {
        var shape = _padTo?.Invoke(Batching.ShapeOf(rows, indices, layout, padToBucket: true)) ?? Batching.ShapeOf(rows, indices, layout);
        return (long)shape.Rows * shape.Tokens;
    }

    /// <summary>
    /// The validation rows' batches, as <see cref="Evaluate"/> takes them: <see cref="TrainingOptions.BatchSize"/> rows each,
    /// longest rows first. The loss is a sum over targets, so the order is free; rows of near-equal length batch side by side
    /// with little padding, where rows of mixed lengths in one packed sequence of T tokens cost attention over T × T
    /// positions (a mixed batch of 64 short rows took 5x the time of an equal-length one on the CPU fixture), which also made
    /// the measured time estimate depend on which batches it happened to time.
    /// </summary>
    public static IEnumerable<int[]> EvaluationBatches(IReadOnlyList<TrainingExample> rows, TrainingOptions options) =>
        Enumerable.Range(0, rows.Count).OrderByDescending(i => rows[i].Length).ThenBy(i => i).Chunk(options.BatchSize);

    /// <summary>
    /// The validation batches <paramref name="share"/>'s replica evaluates (all of them where null): dealt in turn from the
    /// longest, so the first replica's are each at least as long as the others' and at least as many (it finishes last).
    /// </summary>
    public static IEnumerable<int[]> EvaluationBatches(IReadOnlyList<TrainingExample> rows, TrainingOptions options, StepShare? share) =>
        share is { } s ? EvaluationBatches(rows, options).Where((_, i) => i % s.WorldSize == s.Rank) : EvaluationBatches(rows, options);

    /// <summary>Evaluation batches are padded to their longest row (<see cref="EvaluationBatches"/> keeps that short).</summary>
    private const BatchLayout EvaluationLayout = BatchLayout.LengthGrouped;

    /// <summary>
    /// The forced collection after a step that frees what TorchSharp's autograd contexts hold. A blocking full
    /// collection stops every thread of the process, the web server's included; after millisecond steps of a tiny
    /// model on the CPU, one per step kept the wizard's run page from loading for minutes (the browser test timed out
    /// in about half of the full-suite runs). So it collects after a step unless that would spend more than a tenth of
    /// the time collecting, and always after the last; GPU steps, hundreds of milliseconds against a few for a
    /// collection, still get one each.
    /// </summary>
    private sealed class StepCollector
    {
        private const int TimeBetweenPerCollection = 10;
        private readonly Stopwatch _sinceLast = Stopwatch.StartNew();
        private TimeSpan _lastCost;

        public void AfterStep(bool force)
        {
            if (!force && _sinceLast.Elapsed < _lastCost * TimeBetweenPerCollection) return;
            var cost = Stopwatch.StartNew();
            GC.Collect();
            _lastCost = cost.Elapsed;
            _sinceLast.Restart();
        }
    }

    private static void SeedStep(int seed, Device device)
    {
        manual_seed(seed);
        if (device.type == DeviceType.CUDA) cuda.manual_seed_all(seed);
    }

    /// <summary>Mean token loss on the validation rows (no dropout, no gradients); replicas evaluate a share each and add up.</summary>
    public double Evaluate(IReadOnlyList<TrainingExample> rows, TrainingOptions options, Device device, CancellationToken cancellationToken = default)
    {
        bool wasTraining = model.Module.training;
        model.Module.eval();
        try
        {
            using var _ = no_grad();
            using var evalScope = NewDisposeScope();
            double sum = 0;
            long count = 0;
            foreach (var indices in EvaluationBatches(rows, options, Replica?.Share))
            {
                if (Replica is null) cancellationToken.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                using var batch = Batching.Collate(rows, indices, EvaluationLayout, device);
                if (batch.TargetCount == 0) continue;
                var hidden = model.HiddenStates(batch.InputIds, batch.PositionIds, batch.AttentionMask, batch.Packed);
                sum += LossSum(hidden, batch, options.LossChunkSize).item<float>();
                count += batch.TargetCount;
            }
            if (Replica is not null)
            {
                var totals = tensor(new[] { sum, count }, device: device); // (2) fp64
                Replica.Communicator.AllReduceSum(totals);
                var summed = totals.cpu().data<double>().ToArray();
                (sum, count) = (summed[0], (long)summed[1]);
            }
            return count == 0 ? double.NaN : sum / count;
        }
        finally
        {
            if (wasTraining) model.Module.train();
        }
    }

    /// <summary>
    /// What a micro-batch's forward and backward read and write besides the batch, at fixed addresses for the run so a
    /// CUDA graph captured from one micro-batch serves the next: the loss divisor (the window's targets) and the fp16 loss
    /// scale as device scalars, the micro-batch's loss out, and LoRA dropout's device seed (GPU only).
    /// </summary>
    private sealed class MicroBatchTensors(Device device) : IDisposable
    {
        public Tensor Divisor { get; } = zeros([], ScalarType.Float32, device).DetachFromDisposeScope();     // ()
        public Tensor LossScale { get; } = ones([], ScalarType.Float32, device).DetachFromDisposeScope();    // ()
        public Tensor Loss { get; } = zeros([], ScalarType.Float32, device).DetachFromDisposeScope();       // ()
        public Tensor? DropoutSeed { get; } = device.type == DeviceType.CUDA ? zeros(1, ScalarType.Int64, device).DetachFromDisposeScope() : null; // (1)

        public void Dispose()
        {
            Divisor.Dispose();
            LossScale.Dispose();
            Loss.Dispose();
            DropoutSeed?.Dispose();
        }
    }

    /// <summary>
    /// One micro-batch's forward, loss and backward, run as it is or captured into a CUDA graph (<see cref="MicroBatchGraphs"/>):
    /// the loss is divided by the window's target count and multiplied by the loss scale read from device scalars, its value
    /// written to <see cref="MicroBatchTensors.Loss"/>, and the working copies' gradients added to the flat fp32 ones.
    /// </summary>
    private void ForwardBackward(TrainingBatch batch, MicroBatchTensors tensors, bool scaled, int lossChunkSize, AdapterWorkingCopies? workingCopies)
    {
        using var scope = NewDisposeScope();
        model.CheckpointedShare = LongMicroBatches.CheckpointedShare(batch.InputIds.numel(), _longBatchBudget, _runShare); // a graph captures it with its shape
        var hidden = model.HiddenStates(batch.InputIds, batch.PositionIds, batch.AttentionMask, batch.Packed); // (B, T, H)
        // The gradient backward brings to the loss sum, as autograd will compute it: (scale or 1) / targets.
        var upstream = (scaled ? tensors.LossScale : ones_like(tensors.Divisor)) / tensors.Divisor; // ()
        var loss = LossSum(hidden, batch, lossChunkSize, upstream) / tensors.Divisor;
        using (no_grad()) tensors.Loss.copy_(loss);
        PhaseClock?.End(StepPhaseClock.Forward);
        (scaled ? loss * tensors.LossScale : loss).backward();
        workingCopies?.AccumulateGradients();
    }

    /// <summary>
    /// The host's time from reading a step's loss (the device has then finished everything queued) to queuing the next step's
    /// first micro-batch, where the device has nothing to do but the optimizer's few kernels: what a step with graphs costs
    /// beyond its kernels (on a data-parallel replica, including the wait for the slower replica). Host clock only, no sync.
    /// </summary>
    private readonly HostGapClock _hostGap = new();

    private sealed class HostGapClock
    {
        private readonly Stopwatch _clock = new();
        private TimeSpan _total;
        private int _gaps;

        public void AfterRead() => _clock.Restart();

        public void BeforeQueue()
        {
            if (!_clock.IsRunning) return;
            _total += _clock.Elapsed;
            _gaps++;
            _clock.Reset();
        }

        public string Summary => _gaps == 0 ? "not measured" : $"{_total.TotalMilliseconds / _gaps:F2} ms a step over {_gaps} steps";
    }

    private (double Loss, double GradNorm, long Tokens, bool Skipped, bool AllReplayed) Step(int step, List<int[]> window, IReadOnlyList<TrainingExample> rows, TrainingOptions options,
        FlatAdamW optimizer, AdapterWorkingCopies? workingCopies, LossScaler? scaler, MicroBatchTensors microBatch, MicroBatchGraphs? graphs,
        CancellationToken cancellationToken)
    {
        var device = microBatch.Loss.device;
        // The whole step's targets and tokens (every replica's): each replica's loss is divided by all the targets, so
        // the sum of the replicas' gradients is the single-device gradient.
        int windowTargets = window.Sum(indices => indices.Sum(i => rows[i].TargetCount));
        long tokens = window.Sum(indices => indices.Sum(i => (long)rows[i].Length));
        var share = ShareOfSteps?.Of(window, rows, options.Layout) ?? window;
        using var stepScope = NewDisposeScope();
        try
        {
            PhaseClock?.StartStep();
            optimizer.ZeroGrad();
            // Summed on the device (fp64, as the host sum of fp32 items was) and read once with the gradient norm:
            // a read per micro-batch would stall the GPU queue each time.
            var lossSum = zeros(1, dtype: ScalarType.Float64, device: device); // (1)
            using (no_grad())
            {
                microBatch.Divisor.fill_(windowTargets);
                if (scaler is not null) microBatch.LossScale.fill_(scaler.Scale);
            }
            int microBatchIndex = 0;
            // Replayed without a capture in this step: no managed autograd function ran (see the collector in Train).
            bool allReplayed = graphs is not null;
            int capturesBefore = graphs?.Captures ?? 0;
            foreach (var indices in share)
            {
                if (Replica is null) cancellationToken.ThrowIfCancellationRequested();
                using var scope = NewDisposeScope();
                // None holds them (or graphs failed): as they come, without padding.
                var padTo = _padTo?.Invoke(Batching.ShapeOf(rows, indices, options.Layout, padToBucket: true));
                using var batch = Batching.Collate(rows, indices, options.Layout, device, padTo: padTo);
                if (batch.TargetCount == 0) continue;
                // LoRA dropout's masks on a GPU: from (run seed, step, micro-batch, replica) through the device seed.
                long dropoutSeed = DropoutDraws.SeedFor(options.Seed, step, microBatchIndex++, Replica?.Rank ?? 0);
                void Work(TrainingBatch b) => ForwardBackward(b, microBatch, scaler is not null, options.LossChunkSize, workingCopies);
                bool replayed;
                _hostGap.BeforeQueue();
                using (microBatch.DropoutSeed is { } seed ? DropoutDraws.Begin(seed, dropoutSeed) : null)
                    replayed = graphs?.TryRun(batch, Work) == true;
                allReplayed &= replayed;
                // Begun again: a capture that failed had drawn keys, and the micro-batch's draws count from 0.
                if (!replayed)
                    using (microBatch.DropoutSeed is { } seed ? DropoutDraws.Begin(seed, dropoutSeed) : null)
                        Work(batch);
                lossSum.PlusInPlace(microBatch.Loss.to(ScalarType.Float64));
                PhaseClock?.End(StepPhaseClock.Backward);
            }
            // One flat buffer for every trainable gradient, plus the loss: one grouped all-reduce per step, queued behind
            // backward on the device's stream (no host wait). It is not split into buckets overlapping backward as DDP's
            // are: LoRA gradients are small (Qwen2-7B, r 16 on q/k/v/o: 10 M values, 40 MB), one transfer of a few
            // milliseconds at most against a step of hundreds, and with accumulation only the last micro-batch could overlap.
            Replica?.Communicator.AllReduceSum(optimizer.Gradients, lossSum);
            PhaseClock?.End(StepPhaseClock.AllReduce);
            scaler?.Unscale(optimizer.Gradients);
            // The norm before clipping (what clip_grad_norm_ returns and HF logs); an inf/NaN gradient makes it non-finite,
            // which is the overflow check the loss scaler needs.
            var gradNormTensor = optimizer.ClipGradNorm(options.MaxGradNorm);
            var values = cat([lossSum, gradNormTensor.to(ScalarType.Float64).reshape(1)]).cpu().data<double>().ToArray(); // the step's one host read
            if (graphs is not null) _hostGap.AfterRead();
            double lossValue = values[0], gradNorm = values[1];
            bool finite = double.IsFinite(gradNorm);
            if (finite)
            {
                optimizer.Step();
                workingCopies?.Refresh();
            }
            else if (scaler is null) _logger.LogWarning("The gradient norm is {Norm}; the step was skipped. Lower the learning rate if this repeats.", gradNorm);
            scaler?.Update(finite);
            PhaseClock?.End(StepPhaseClock.Optimizer);
            return (lossValue, gradNorm, tokens, scaler is not null && !finite, allReplayed && graphs!.Captures == capturesBefore);
        }
        catch (Exception e) when (IsOutOfMemory(e))
        {
            optimizer.ZeroGrad();
            GC.Collect();
            throw new TrainingOutOfMemoryException("a training step", e);
        }
    }

    /// <summary>
    /// Sum of fp32 cross-entropy over the batch's target positions; lm_head runs on those positions only, in chunks
    /// (<see cref="LmHeadLoss"/>). <paramref name="upstream"/>: the gradient backward will bring to the sum, where known,
    /// so each chunk's gradient is made in forward and its logits are not kept for backward.
    /// </summary>
    internal Tensor LossSum(Tensor hidden, TrainingBatch batch, int chunkSize, Tensor? upstream = null)
    {
        using var scope = NewDisposeScope();
        long H = hidden.shape[^1];
        var positions = batch.TargetPositions;                                     // (N)
        var h = hidden.reshape(-1, H).index_select(0, positions);                  // (N, H)
        var t = batch.Targets.reshape(-1).index_select(0, positions);              // (N)
        return scope.MoveToOuter(LmHeadLoss.Sum(model.LmHead, h, t, chunkSize, upstream));
    }

    internal static bool IsOutOfMemory(Exception e) =>
        e is OutOfMemoryException
        || (e is ExternalException or InvalidOperationException or ArgumentException &&
            (e.Message.Contains("out of memory", StringComparison.OrdinalIgnoreCase) || e.Message.Contains("can't allocate memory", StringComparison.OrdinalIgnoreCase)));

    private static TrainingResult Result(List<StepRecord> history, int totalSteps, bool completed, string? lastCheckpoint, double? lastLoggedLoss)
    {
        // The final loss is the last logged value (the train page's, the chart's last point), not the last step's alone.
        double? finalTrain = lastLoggedLoss ?? (history.Count > 0 ? history[^1].Loss : null);
        double? finalEval = history.LastOrDefault(h => h.EvalLoss is not null)?.EvalLoss;
        return new TrainingResult(history.Count > 0 ? history[^1].Step : 0, totalSteps, history, finalTrain, finalEval, completed, lastCheckpoint);
    }

    /// <summary>Dynamic loss scaling for fp16 (torch.amp.GradScaler's defaults: 2^16, ×2 after 2000 good steps, ÷2 on overflow).</summary>
    private sealed class LossScaler
    {
        public double Scale { get; set; } = 65536;
        private int _goodSteps;

        /// <summary>Divides the (flat) gradients by the scale; overflow shows as a non-finite gradient norm afterwards.</summary>
        public void Unscale(Tensor gradients)
        {
            using var _ = no_grad();
            gradients.DividedByInPlace(Scale);
        }

        public void Update(bool finite)
        {
            if (!finite) { Scale /= 2; _goodSteps = 0; return; }
            if (++_goodSteps >= 2000) { Scale *= 2; _goodSteps = 0; }
        }
    }
}

/// <summary>The micro-batch shapes of a run that get CUDA graphs, and whether its packed rows are padded to bucket lengths for them.</summary>
public sealed record GraphPlan(IReadOnlySet<BatchShape> Shapes, bool PadPackedRows);
