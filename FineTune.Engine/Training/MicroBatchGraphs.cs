using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Kernels;
using static TorchSharp.torch;

namespace FineTune.Engine.Training;

/// <summary>
/// A training run's micro-batches on a GPU as CUDA graphs (<see cref="CudaGraphs"/>), one per batch shape: the forward,
/// loss and backward of a micro-batch are captured the first time its shape comes, then every micro-batch of that shape
/// is copied into the captured batch's tensors and the graph replayed, one launch where the host issued thousands of
/// kernels. Everything the work reads besides the batch lives at fixed addresses for the run: the model's weights, the
/// adapters' working copies and flat gradients (accumulated in place), the dropout seed and the loss divisor and scale
/// (written before each micro-batch), the loss output. The graphs share one memory pool.
/// <para>
/// Two kinds of plan. Rows that repeat their shapes as they come (fixed-length rows) get a graph for each shape that
/// repeats (<see cref="RepeatingShapes"/>), captured the first time it comes. Packed Q&amp;A rows rarely give one shape
/// twice; they are padded to bucket lengths (<see cref="Batching.Collate"/>'s padTo) and every shape of the plan
/// (<see cref="PaddedShapes"/>) is captured before the first step, the largest first (<see cref="CaptureAll"/>). A failed
/// capture (an op that cannot be captured) turns graphs off for the run; the caller then runs the micro-batch as it did before.
/// </para>
/// </summary>
internal sealed class MicroBatchGraphs(int ordinal, IReadOnlySet<BatchShape> shapes) : IDisposable
{
    /// <summary>At most this many shapes get a graph (<see cref="RepeatingShapes"/>: the most frequent; <see cref="PaddedShapes"/>: by cost).</summary>
    internal const int MaxGraphs = 16;

    private readonly Dictionary<BatchShape, (CudaGraphs.CudaGraph Graph, TrainingBatch Batch)> _graphs = [];
    private CudaGraphs.CudaGraph? _poolOwner;
    private bool _capturesStopped;
    private long? _firstCaptureGrowth;
    private readonly System.Diagnostics.Stopwatch _recording = new(), _settling = new(); // where the captures' time goes, for the log

    /// <summary>
    /// The shapes worth a graph as the rows come: among <paramref name="microBatches"/>, the <see cref="MaxGraphs"/> most
    /// frequent that come at least three times, and none unless those cover at least half the micro-batches (each capture
    /// costs the host about what running the micro-batch does, plus the instantiation).
    /// </summary>
    public static IReadOnlySet<BatchShape> RepeatingShapes(IEnumerable<BatchShape> microBatches)
    {
        var counts = microBatches.GroupBy(s => s).Select(g => (Shape: g.Key, Count: g.Count())).ToList();
        var chosen = counts.Where(c => c.Count >= 3).OrderByDescending(c => c.Count).Take(MaxGraphs).ToList();
        return 2 * chosen.Sum(c => c.Count) >= counts.Sum(c => c.Count) ? chosen.Select(c => c.Shape).ToHashSet() : [];
    }

    /// <summary>
    /// What a capture costs, in the run's own steps: the host records the micro-batch's ops once (slower than running
    /// them) and the graph is instantiated; 7B Q&amp;A on an H200 took ~200 ms a shape against a 98 ms step (benchmarks.md, call 19).
    /// </summary>
    internal const double CaptureCostInSteps = 2;

    /// <summary>
    /// The graph shapes of a run whose packed rows are padded, from its micro-batches' bucket shapes (<see cref="Batching.ShapeOf"/>
    /// with padToBucket), all of them (every epoch's: a shape's count is how often it runs). A micro-batch runs in the smallest
    /// chosen shape of its sequence count that holds it (<see cref="ShapeFor"/>), so a length left out costs padding to the
    /// next chosen one instead of a capture: for each sequence count the lengths are chosen to minimize captures ×
    /// <see cref="CaptureCostInSteps"/> plus every micro-batch's extra tokens (in steps: a step's time taken as its tokens'),
    /// always with the longest (nothing would hold it); each shape holds the most targets of the micro-batches it takes.
    /// At most <see cref="MaxGraphs"/> (captures cost more until that many suffice).
    /// </summary>
    public static IReadOnlySet<BatchShape> PaddedShapes(IEnumerable<BatchShape> buckets)
    {
        var groups = buckets.GroupBy(b => (b.Rows, b.Masked, b.Sequences)).ToList();
        for (double cost = CaptureCostInSteps; ; cost *= 2)
        {
            var chosen = groups.SelectMany(g => ChooseLengths(g.ToList(), cost)).ToHashSet();
            if (chosen.Count <= MaxGraphs) return chosen;
        }
    }

    /// <summary>One sequence count's shapes (see <see cref="PaddedShapes"/>): a dynamic program over its lengths, shortest first.</summary>
    private static IEnumerable<BatchShape> ChooseLengths(List<BatchShape> buckets, double captureCost)
    {
        var lengths = buckets.GroupBy(b => b.Tokens).OrderBy(g => g.Key)
            .Select(g => (Tokens: g.Key, Count: (double)g.Count(), Targets: g.Max(b => b.Targets))).ToArray();
        int k = lengths.Length;
        // best[j]: the least cost of lengths 0..j-1 with length j-1 chosen; from[j] = i: length i-1 is the chosen one before it (i = 0: none).
        var best = new double[k + 1];
        var from = new int[k + 1];
        for (int j = 1; j <= k; j++)
        {
            best[j] = double.PositiveInfinity;
            double padding = 0;                                          // lengths i..j-2 padded to length j-1
            for (int i = j - 1; i >= 0; i--)
            {
                double cost = best[i] + captureCost + padding;
                if (cost < best[j]) (best[j], from[j]) = (cost, i);
                if (i > 0) padding += lengths[i - 1].Count * ((double)lengths[j - 1].Tokens / lengths[i - 1].Tokens - 1);
            }
        }
        var chosen = new List<BatchShape>();
        for (int j = k; j > 0; j = from[j])
        {
            int i = from[j];
            int targets = lengths[i..j].Max(l => l.Targets);              // what the lengths it takes need
            chosen.Add(buckets[0] with { Tokens = lengths[j - 1].Tokens, Longest = lengths[j - 1].Tokens, Targets = targets });
        }
        return chosen;
    }

    /// <summary>
    /// The shape a micro-batch of padded packed rows (its bucket shape) is padded to: the smallest captured one that holds
    /// it, or, before <see cref="CaptureAll"/>, of the planned ones; null where none does or graphs are off (the micro-batch
    /// then runs as it comes, without padding).
    /// </summary>
    public BatchShape? ShapeFor(BatchShape bucket)
    {
        if (Failure is not null) return null;
        return SmallestHolding(_graphs.Count > 0 ? _graphs.Keys : shapes, bucket);
    }

    /// <summary>The smallest of <paramref name="shapes"/> that holds packed rows of <paramref name="bucket"/> (<see cref="Batching.Fits"/>), if any.</summary>
    public static BatchShape? SmallestHolding(IEnumerable<BatchShape> shapes, BatchShape bucket) =>
        shapes.Where(s => Batching.Fits(bucket, s)).OrderBy(s => s.Tokens).ThenBy(s => s.Targets).Cast<BatchShape?>().FirstOrDefault();

    /// <summary>
    /// Captures a graph of every planned shape before training, the largest first, each from a placeholder micro-batch of its
    /// shape (<paramref name="placeholder"/>; a capture runs nothing, so the values do not matter): the graphs share one pool,
    /// and the blocks the largest freed serve the smaller ones, where shapes captured as they came (in random order) each
    /// added their own. 7B Q&amp;A on one H200: captured as they came, the first of 16 shapes took 8.0 GiB and the run peaked
    /// 10.0 GiB above the same run without graphs; captured here, 12 shapes took 11.1 GiB together and the run peaked 1.3 GiB
    /// above it (benchmarks.md, calls 16 and 18). No micro-batch runs without a graph before, so the pool is the run's
    /// working set. <paramref name="scope"/> opens what the work reads around a micro-batch (the dropout seed's draws), as
    /// the step does.
    /// </summary>
    public void CaptureAll(Func<BatchShape, TrainingBatch> placeholder, Action<TrainingBatch> work, Func<IDisposable?> scope)
    {
        var clock = System.Diagnostics.Stopwatch.StartNew();
        foreach (var shape in shapes.OrderByDescending(s => s.Tokens).ThenByDescending(s => s.Targets))
        {
            if (Failure is not null || _capturesStopped) break;
            using var batch = placeholder(shape);
            using (scope()) Capture(batch, work);
        }
        MemoryTrace += $"; {_graphs.Count} of {shapes.Count} shapes captured before training in {clock.Elapsed.TotalSeconds:F2} s"
            + $" (recording {_recording.Elapsed.TotalSeconds:F2} s, collections {_settling.Elapsed.TotalSeconds:F2} s)";
    }

    /// <summary>Why graphs were turned off for this run; null while they work.</summary>
    public string? Failure { get; private set; }

    /// <summary>Micro-batches run by a graph, and graphs captured.</summary>
    public int Replays { get; private set; }

    public int Captures => _graphs.Count;

    /// <summary>GPU memory in use (NVML, whole device) before and after the first capture and after its first replay, in MiB: the graphs' cost in memory.</summary>
    public string MemoryTrace { get; private set; } = "";

    /// <summary>
    /// Runs <paramref name="work"/> on <paramref name="batch"/> through the graph of its shape, capturing it first when
    /// new; false when it did not (graphs off for this run, or no more captures): the caller runs the work itself.
    /// </summary>
    public bool TryRun(TrainingBatch batch, Action<TrainingBatch> work)
    {
        if (Failure is not null) return false;
        var key = batch.Shape;
        if (!_graphs.TryGetValue(key, out var entry))
        {
            if (!shapes.Contains(key) || _capturesStopped || !Capture(batch, work)) return false;
            entry = _graphs[key];
        }
        else
        {
            using (no_grad()) CopyInto(entry.Batch, batch);
        }
        entry.Graph.Replay();
        if (Replays++ == 0) Trace("replayed", UsedBytes(batch.InputIds.device));
        return true;
    }

    /// <summary>Captures the graph of <paramref name="batch"/>'s shape from it (its tensors are cloned: the graph reads the clones for its life); false when the capture failed.</summary>
    private bool Capture(TrainingBatch batch, Action<TrainingBatch> work)
    {
        var key = batch.Shape;
        var device = batch.InputIds.device;
        var captured = Clone(batch);
        bool first = _graphs.Count == 0;
        // Tensors of earlier captures that only the finalizer frees go back to the shared pool first, for this one to reuse.
        if (!first)
        {
            _settling.Start();
            SettleManagedTensors();
            _settling.Stop();
        }
        long? usedBefore = UsedBytes(device);
        if (first) Trace("before capture", usedBefore);
        var graph = new CudaGraphs.CudaGraph();
        _recording.Start();
        bool recorded = graph.Capture(ordinal, () => work(captured), out var failure, _poolOwner);
        _recording.Stop();
        if (!recorded)
        {
            Failure = failure;
            captured.Dispose();
            graph.Dispose();
            return false;
        }
        _poolOwner ??= graph;
        _graphs[key] = (graph, captured);
        long? usedAfter = UsedBytes(device);
        // The pool should serve a later capture from what earlier ones freed; where a capture still took half as much
        // new memory as the first did, more shapes would keep adding their own: no more captures in this run.
        long? growth = usedAfter - usedBefore;
        if (first)
        {
            _firstCaptureGrowth = growth;
            Trace("captured", usedAfter);
            MemoryTrace += $" (recorded and instantiated in {_recording.Elapsed.TotalSeconds:F2} s)";
        }
        else if (growth is long g && _firstCaptureGrowth is long f && g > Math.Max(f / 2, 64L << 20))
        {
            _capturesStopped = true;
            MemoryTrace += $", captures stopped after {_graphs.Count} (the last took {g >> 20} MiB more)";
        }
        return true;
    }

    /// <summary>GPU memory in use once the device has finished what is queued (NVML, whole device).</summary>
    private static long? UsedBytes(Device device)
    {
        cuda.synchronize(device);
        return GpuMemory.UsedBytes(device);
    }

    private static void SettleManagedTensors()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
    }

    private void Trace(string when, long? used)
    {
        if (used is long bytes) MemoryTrace += $"{(MemoryTrace.Length == 0 ? "" : ", ")}{when} {bytes >> 20} MiB";
    }

    private static TrainingBatch Clone(TrainingBatch b)
    {
        using var _ = no_grad();
        return new TrainingBatch(b.InputIds.clone().DetachFromDisposeScope(), b.PositionIds.clone().DetachFromDisposeScope(),
            b.Targets.clone().DetachFromDisposeScope(), b.AttentionMask?.clone().DetachFromDisposeScope(), b.TokenCount, b.TargetCount,
            b.TargetPositions.clone().DetachFromDisposeScope(),
            b.Packed is null ? null : b.Packed with { Starts = b.Packed.Starts.clone().DetachFromDisposeScope() });
    }

    private static void CopyInto(TrainingBatch target, TrainingBatch source)
    {
        target.InputIds.copy_(source.InputIds);
        target.PositionIds.copy_(source.PositionIds);
        target.Targets.copy_(source.Targets);
        target.AttentionMask?.copy_(source.AttentionMask!);
        target.TargetPositions.copy_(source.TargetPositions);
        target.Packed?.Starts.copy_(source.Packed!.Starts);                // the longest length is the shape's: the same in both
    }

    public void Dispose()
    {
        // Every graph that shares the pool goes before the pool's owner (the pool is released with the last).
        foreach (var (graph, batch) in _graphs.Values.Reverse())
        {
            graph.Dispose();
            batch.Dispose();
        }
        _graphs.Clear();
    }
}
