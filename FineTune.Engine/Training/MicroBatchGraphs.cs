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
/// Only shapes that repeat are captured (<see cref="RepeatingShapes"/>): a capture costs the host what running the
/// micro-batch costs, plus the instantiation, and each graph keeps what its capture left allocated. Fixed-length batches
/// (one shape) replay from the first micro-batch; Q&amp;A rows packed by length rarely give one shape twice and run
/// without graphs, as before. A failed capture (an op that cannot be captured) turns graphs off for the run; the caller
/// then runs the micro-batch as it did before.
/// </para>
/// </summary>
internal sealed class MicroBatchGraphs(int ordinal, IReadOnlySet<BatchShape> shapes) : IDisposable
{
    /// <summary>At most this many shapes get a graph (the most frequent first).</summary>
    internal const int MaxGraphs = 16;

    private readonly Dictionary<BatchShape, (CudaGraphs.CudaGraph Graph, TrainingBatch Batch)> _graphs = [];
    private CudaGraphs.CudaGraph? _poolOwner;
    private bool _capturesStopped;
    private long? _firstCaptureGrowth;

    /// <summary>
    /// The shapes worth a graph: among <paramref name="microBatches"/>, the <see cref="MaxGraphs"/> most frequent that come
    /// at least three times, and none unless those cover at least half the micro-batches. Each shape costs a capture and
    /// keeps memory: shapes of different sizes do not reuse each other's blocks well (7B Q&amp;A, 2,000 rows padded to 16
    /// lengths so that they repeat: 212 of 250 micro-batches replayed, no faster on one H200 and 11 GiB more at the peak),
    /// so a run of many shapes runs without graphs.
    /// </summary>
    public static IReadOnlySet<BatchShape> RepeatingShapes(IEnumerable<BatchShape> microBatches)
    {
        var counts = microBatches.GroupBy(s => s).Select(g => (Shape: g.Key, Count: g.Count())).ToList();
        var chosen = counts.Where(c => c.Count >= 3).OrderByDescending(c => c.Count).Take(MaxGraphs).ToList();
        return 2 * chosen.Sum(c => c.Count) >= counts.Sum(c => c.Count) ? chosen.Select(c => c.Shape).ToHashSet() : [];
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
        var device = batch.InputIds.device;
        if (_graphs.TryGetValue(key, out var entry))
        {
            using (no_grad()) CopyInto(entry.Batch, batch);
        }
        else
        {
            if (!shapes.Contains(key) || _capturesStopped) return false;
            var captured = Clone(batch);                                            // the graph reads these for its life
            bool first = _graphs.Count == 0;
            // Tensors of earlier captures that only the finalizer frees go back to the shared pool first, for this one to reuse.
            if (!first) SettleManagedTensors();
            long? usedBefore = UsedBytes(device);
            if (first) Trace("before capture", usedBefore);
            var graph = new CudaGraphs.CudaGraph();
            if (!graph.Capture(ordinal, () => work(captured), out var failure, _poolOwner))
            {
                Failure = failure;
                captured.Dispose();
                graph.Dispose();
                return false;
            }
            _poolOwner ??= graph;
            _graphs[key] = entry = (graph, captured);
            long? usedAfter = UsedBytes(device);
            // The pool should serve a later capture from what earlier ones freed; where a capture still took half as much
            // new memory as the first did, more shapes would keep adding their own: no more captures in this run.
            long? growth = usedAfter - usedBefore;
            if (first)
            {
                _firstCaptureGrowth = growth;
                Trace("captured", usedAfter);
            }
            else if (growth is long g && _firstCaptureGrowth is long f && g > Math.Max(f / 2, 64L << 20))
            {
                _capturesStopped = true;
                MemoryTrace += $", captures stopped after {_graphs.Count} (the last took {g >> 20} MiB more)";
            }
        }
        entry.Graph.Replay();
        if (Replays++ == 0) Trace("replayed", UsedBytes(device));
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
