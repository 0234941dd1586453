using FineTune.Engine.Backend;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.Runs;

/// <summary>What one queued run asks of the machine: every GPU, or one, each with this much memory free.</summary>
/// <param name="AllGpus">Data parallel on every GPU that can hold it; false: one GPU.</param>
/// <param name="BytesPerGpu">
/// The least memory the run can need (<see cref="TrainingEstimator.LeastMemory"/>: auto gradient checkpointing counted on;
/// each replica holds the whole model); 0 when unknown.
/// </param>
public sealed record GpuRequest(bool AllGpus, long BytesPerGpu);

/// <summary>The GPUs given to one run until it ends (empty on the CPU backend).</summary>
public sealed class GpuLease(GpuPool pool, IReadOnlyList<int> indices) : IDisposable
{
    private int _released;

    /// <summary>CUDA ordinals of the run's GPUs, in order (the first is rank 0).</summary>
    public IReadOnlyList<int> Indices { get; } = indices;

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _released, 1) == 0) pool.Release(this);
    }
}

/// <summary>
/// The machine's GPUs and which runs hold them: the queue starts a run when the GPUs it asks for are free and each has
/// the memory its estimate needs, so two one-GPU runs train at once on a two-GPU machine. On the CPU backend there is
/// one slot: one run at a time, as before.
/// </summary>
public sealed class GpuPool(IReadOnlyList<GpuDevice> gpus)
{
    /// <summary>Runs estimated to take at least this long default to every GPU (<see cref="GpuChoice.Auto"/>).</summary>
    public static readonly TimeSpan LongRun = TimeSpan.FromMinutes(10);

    private readonly Lock _gate = new();
    private readonly HashSet<int> _busy = [];
    private bool _cpuBusy;

    public static GpuPool For(BackendInfo backend) => new(backend.IsCuda ? backend.Gpus : []);

    public IReadOnlyList<GpuDevice> Gpus { get; } = gpus;

    /// <summary>Raised after GPUs are given back (the queue then looks at its head again).</summary>
    public event Action? Released;

    /// <summary>
    /// Whether a run with these settings trains on every GPU: as chosen, or for <see cref="GpuChoice.Auto"/> when the
    /// machine has more than one GPU and the run is estimated to take at least <see cref="LongRun"/> on one.
    /// </summary>
    public static bool UsesAllGpus(TrainingSettings settings, TimeSpan? estimatedTime, int gpuCount) => gpuCount > 1 && settings.Gpus switch
    {
        GpuChoice.All => true,
        GpuChoice.One => false,
        _ => AutoUsesAllGpus(estimatedTime, gpuCount),
    };

    /// <summary>What <see cref="GpuChoice.Auto"/> picks: every GPU when there are several and one would take at least <see cref="LongRun"/>.</summary>
    public static bool AutoUsesAllGpus(TimeSpan? estimatedTimeOnOne, int gpuCount) => gpuCount > 1 && estimatedTimeOnOne >= LongRun;

    /// <summary>
    /// The request of a queued run: its GPU choice and the least memory it needs per GPU (with auto gradient checkpointing
    /// counted on, so a GPU that holds the run only with it is still a candidate; the run decides against the GPU it gets).
    /// </summary>
    public GpuRequest RequestFor(TrainingSettings settings, int rows, int totalTokens)
    {
        var shape = ModelCatalog.FactsOf(settings);
        long bytes = shape is null ? 0 : TrainingEstimator.LeastMemory(shape, settings).Total;
        TimeSpan? time = shape is null || rows == 0 ? null : TrainingEstimator.Time(shape, totalTokens, settings, cuda: true, Environment.ProcessorCount);
        return new GpuRequest(UsesAllGpus(settings, time, Gpus.Count), bytes);
    }

    /// <summary>
    /// The GPUs that can hold the request: memory at least its estimate. When none can (the estimate is above every
    /// GPU), the largest one, so the run still tries there rather than waiting forever.
    /// </summary>
    public IReadOnlyList<GpuDevice> Candidates(GpuRequest request)
    {
        var fitting = Gpus.Where(g => g.MemoryBytes >= request.BytesPerGpu).ToList();
        return fitting.Count > 0 || Gpus.Count == 0 ? fitting : [Gpus.MaxBy(g => g.MemoryBytes)!];
    }

    /// <summary>
    /// The memory of the smallest GPU a run with these settings may train on (of the candidates for its request): what the
    /// settings page decides its automatic gradient checkpointing against. Null on the CPU backend.
    /// </summary>
    public long? SmallestGpuFor(TrainingSettings settings, int rows, int totalTokens) =>
        Gpus.Count == 0 ? null : Candidates(RequestFor(settings, rows, totalTokens)).Min(g => g.MemoryBytes);

    /// <summary>
    /// The GPUs a run with these settings takes when every GPU is free (<see cref="TryTake"/>'s choice). What the settings
    /// page estimates the time on. Empty on the CPU backend.
    /// </summary>
    public IReadOnlyList<int> PlannedGpus(TrainingSettings settings, int rows, int totalTokens) =>
        Gpus.Count == 0 ? [] : Choose(RequestFor(settings, rows, totalTokens), busy: new HashSet<int>())!;

    /// <summary>
    /// Takes the GPUs for <paramref name="request"/> if they are free now (<see cref="Choose"/>). Null: wait.
    /// </summary>
    public GpuLease? TryTake(GpuRequest request)
    {
        lock (_gate)
        {
            if (Gpus.Count == 0)
            {
                if (_cpuBusy) return null;
                _cpuBusy = true;
                return new GpuLease(this, []);
            }
            if (Choose(request, _busy) is not { } indices) return null;
            foreach (int index in indices) _busy.Add(index);
            return new GpuLease(this, indices);
        }
    }

    /// <summary>
    /// The GPUs <paramref name="request"/> takes while <paramref name="busy"/> are held: for every-GPU runs all candidates,
    /// once none is busy; for one-GPU runs the free candidate with the least memory that holds it, then the lowest index
    /// (big GPUs stay free for big runs). Null: none to take now.
    /// </summary>
    private int[]? Choose(GpuRequest request, IReadOnlySet<int> busy)
    {
        var candidates = Candidates(request);
        if (request.AllGpus) return candidates.Any(g => busy.Contains(g.Index)) ? null : [.. candidates.Select(g => g.Index)];
        var free = candidates.Where(g => !busy.Contains(g.Index)).OrderBy(g => g.MemoryBytes).ThenBy(g => g.Index).FirstOrDefault();
        return free is null ? null : [free.Index];
    }

    /// <summary>GPUs held by runs now.</summary>
    public IReadOnlyCollection<int> Busy
    {
        get { lock (_gate) return [.. _busy]; }
    }

    internal void Release(GpuLease lease)
    {
        lock (_gate)
        {
            if (Gpus.Count == 0) _cpuBusy = false;
            foreach (int index in lease.Indices) _busy.Remove(index);
        }
        Released?.Invoke();
    }
}
