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
/// (written before each micro-batch), the loss output. The graphs share one memory pool, so a run holds one micro-batch's
/// activations whatever the number of shapes.
/// <para>
/// A shape seen for the first time costs a capture (the host records the work as it would issue it, then the graph is
/// instantiated) on top of the replay, so where shapes rarely repeat (Q&amp;A rows of many lengths) capturing stops after
/// <see cref="CaptureBudget"/> captures that were never replayed, and the rest runs without graphs. A failed capture
/// (an op that cannot be captured) turns graphs off for the run; the caller then runs the micro-batch as it did before.
/// </para>
/// </summary>
internal sealed class MicroBatchGraphs(int ordinal) : IDisposable
{
    /// <summary>Captures whose graphs were not replayed yet that stop further capturing.</summary>
    internal const int CaptureBudget = 8;

    private readonly Dictionary<string, (CudaGraphs.CudaGraph Graph, TrainingBatch Batch)> _graphs = [];
    private CudaGraphs.CudaGraph? _poolOwner;
    private readonly HashSet<string> _replayed = [];

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
        string key = Shape(batch);
        if (_graphs.TryGetValue(key, out var entry))
        {
            using (no_grad()) CopyInto(entry.Batch, batch);
            _replayed.Add(key);
        }
        else
        {
            if (_graphs.Count - _replayed.Count >= CaptureBudget) return false;
            var captured = Clone(batch);                                            // the graph reads these for its life
            var device = batch.InputIds.device;
            bool first = _graphs.Count == 0;
            if (first) Trace("before capture", device);
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
            if (first)
            {
                Trace("captured", device);
                entry.Graph.Replay();
                Replays++;
                cuda.synchronize(device);
                Trace("replayed", device);
                return true;
            }
        }
        entry.Graph.Replay();
        Replays++;
        return true;
    }

    private void Trace(string when, Device device)
    {
        cuda.synchronize(device);
        if (GpuMemory.UsedBytes(device) is long used) MemoryTrace += $"{(MemoryTrace.Length == 0 ? "" : ", ")}{when} {used >> 20} MiB";
    }

    /// <summary>The shapes the captured work depends on (the chunks of the loss follow from the target count).</summary>
    private static string Shape(TrainingBatch b) =>
        $"{string.Join('x', b.InputIds.shape)}|{(b.AttentionMask is null ? "-" : string.Join('x', b.AttentionMask.shape))}|{b.TargetPositions.shape[0]}";

    private static TrainingBatch Clone(TrainingBatch b)
    {
        using var _ = no_grad();
        return new TrainingBatch(b.InputIds.clone().DetachFromDisposeScope(), b.PositionIds.clone().DetachFromDisposeScope(),
            b.Targets.clone().DetachFromDisposeScope(), b.AttentionMask?.clone().DetachFromDisposeScope(), b.TokenCount, b.TargetCount,
            b.TargetPositions.clone().DetachFromDisposeScope());
    }

    private static void CopyInto(TrainingBatch target, TrainingBatch source)
    {
        target.InputIds.copy_(source.InputIds);
        target.PositionIds.copy_(source.PositionIds);
        target.Targets.copy_(source.Targets);
        target.AttentionMask?.copy_(source.AttentionMask!);
        target.TargetPositions.copy_(source.TargetPositions);
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
