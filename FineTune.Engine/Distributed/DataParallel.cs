using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Distributed;

/// <summary>
/// The replicas of one data-parallel run on the devices of this machine: one replica per GPU, each on a thread of its
/// own in this process, joined by NCCL (by <see cref="HostCommunicator"/> when the devices are CPUs, for tests).
/// <para>
/// Why threads in one process, not a process per GPU as torchrun does: libtorch is loaded once per process and
/// TorchSharp's state (the backend choice, dispose scopes' thread-statics aside) is process-wide; the wizard's run
/// queue, the headless command and the benchmark all run the pipeline in-process, and a run's progress, cancellation
/// and adapter export stay where they are today. Per thread, cudaSetDevice picks the replica's GPU (TorchSharp 0.107
/// has no torch.cuda.set_device) and every tensor names its device; autograd's and the caching allocator's state is
/// per device in libtorch. NCCL itself does not care: each rank joins through ncclCommInitRank with the unique id,
/// exactly as separate processes (or machines) would, so only the id's transport changes past one process
/// (docs/scale.md).
/// </para>
/// <para>
/// Failure: every communicator exists before the replica threads start (made together on the creating thread), so when
/// a replica fails or the run is cancelled, <see cref="Fail"/> aborts all of them (ncclCommAbort) and the step barrier:
/// a replica waiting for the failed one, in a collective on its GPU or at the barrier, stops instead of waiting forever.
/// </para>
/// </summary>
public sealed class DataParallelGroup : IDisposable
{
    private readonly IReplicaCommunicator?[] _communicators;
    private readonly Barrier _stepBarrier;
    private readonly CancellationTokenSource _failed = new();
    private Exception? _firstFailure;
    private Action? _pendingStepAction;
    private bool _stopRequested;

    private DataParallelGroup(IReadOnlyList<Device> devices, IReadOnlyList<IReplicaCommunicator> communicators)
    {
        if (communicators.Count != devices.Count) throw new ArgumentException("One communicator per device.", nameof(communicators));
        Devices = devices;
        _communicators = [.. communicators];
        // The post-phase action runs once, on one thread, after every replica arrived: one cancellation decision and
        // one seeding for all replicas (two threads seeding the CUDA generators at once would race).
        _stepBarrier = new Barrier(devices.Count, _ =>
        {
            _pendingStepAction?.Invoke();
            _pendingStepAction = null;
        });
    }

    public IReadOnlyList<Device> Devices { get; }

    public int WorldSize => Devices.Count;

    /// <summary>The first exception a replica reported through <see cref="Fail"/>.</summary>
    public Exception? FirstFailure => _firstFailure;

    /// <summary>
    /// A group over <paramref name="devices"/>: all CUDA (distinct GPUs, NCCL) or all CPU (threads summing through host memory).
    /// Turns NVLink multicast off first (<see cref="MulticastSafety"/>).
    /// </summary>
    public static DataParallelGroup Create(IReadOnlyList<Device> devices) => new(devices, Communicators(devices));

    /// <summary>The communicators of a group over <paramref name="devices"/>, one per device in rank order, all joined.</summary>
    internal static IReadOnlyList<IReplicaCommunicator> Communicators(IReadOnlyList<Device> devices)
    {
        ArgumentNullException.ThrowIfNull(devices);
        if (devices.Count < 2) throw new ArgumentException("Data-parallel training needs at least two devices.", nameof(devices));
        MulticastSafety.Apply();
        if (devices.All(d => d.type == DeviceType.CPU)) return HostCommunicator.CreateGroup(devices.Count);
        if (!devices.All(d => d.type == DeviceType.CUDA))
            throw new ArgumentException($"The devices of a data-parallel run must all be GPUs (or all CPUs); got {string.Join(", ", devices)}.", nameof(devices));
        var indices = devices.Select(d => d.index < 0 ? 0 : (int)d.index).ToList();
        if (indices.Distinct().Count() != indices.Count)
            throw new ArgumentException($"A GPU is listed twice: {string.Join(", ", devices)}. Each replica needs a GPU of its own.", nameof(devices));
        // Each GPU's first allocation here, one after the other, before the replica threads start. libtorch's
        // expandable-segment allocator settles its memory handle type at the first allocation (falling back when one is
        // not permitted); with both replicas making their first allocation at once, one failed in the allocator's map
        // with "CUDA driver error: operation not permitted" (2 H200s, torch 2.11), while a process that had allocated
        // before the threads started ran.
        foreach (var device in devices) zeros(1, device: device).Dispose();
        // Connections between the ranks at init, not at the first collective: a collective call then never waits on the
        // host for a peer that may have failed (see NcclCommunicator). Read by NCCL at its first init in this process.
        if (OperatingSystem.IsLinux()) NativeEnvironment.Set("NCCL_RUNTIME_CONNECT", "0");
        return NcclCommunicator.CreateGroup(indices);
    }

    /// <summary>A group whose replicas use the given communicators, one per device in rank order (tests: failing or recording ones).</summary>
    internal static DataParallelGroup Create(IReadOnlyList<Device> devices, IReadOnlyList<IReplicaCommunicator> communicators) => new(devices, communicators);

    /// <summary>Called on the replica's own thread before it touches its device: makes the replica's GPU the thread's current one.</summary>
    public DataParallelReplica Join(int rank)
    {
        var communicator = _communicators[rank] ?? throw new InvalidOperationException($"Replica {rank} has left the group.");
        if (Devices[rank].type == DeviceType.CUDA) CudaRuntime.SetDevice(Devices[rank].index < 0 ? 0 : (int)Devices[rank].index);
        return new DataParallelReplica(this, communicator, Devices[rank]);
    }

    /// <summary>A replica finished: frees its communicator on its own thread (where its device is current).</summary>
    public void Leave(int rank)
    {
        var communicator = Interlocked.Exchange(ref _communicators[rank], null);
        communicator?.Dispose();
    }

    /// <summary>
    /// A replica failed: remembers the first failure and aborts every communicator and the step barrier, so the other
    /// replicas, waiting for this one in a collective, fail too instead of waiting forever.
    /// </summary>
    public void Fail(Exception exception)
    {
        if (Interlocked.CompareExchange(ref _firstFailure, exception, null) is not null) return;
        _failed.Cancel();
        foreach (var communicator in _communicators) communicator?.Abort();
    }

    /// <summary>Every replica calls this at the start of each optimizer step; see <see cref="DataParallelReplica.BeginStep"/>.</summary>
    internal bool BeginStep(int rank, CancellationToken cancellationToken, Action onAllArrived)
    {
        if (rank == 0)
        {
            _pendingStepAction = () =>
            {
                _stopRequested = cancellationToken.IsCancellationRequested;
                if (!_stopRequested) onAllArrived();
            };
        }
        _stepBarrier.SignalAndWait(_failed.Token);
        return _stopRequested;
    }

    public void Dispose()
    {
        foreach (var communicator in _communicators)
        {
            try
            {
                communicator?.Dispose();
            }
            catch (NcclException)
            {
                // A communicator left behind by a failed replica; the failure itself is what the caller sees.
            }
        }
        _stepBarrier.Dispose();
        _failed.Dispose();
    }
}

/// <summary>One replica of a data-parallel run, used on its own thread: its rank, its device, its share of each batch.</summary>
public sealed class DataParallelReplica(DataParallelGroup group, IReplicaCommunicator communicator, Device device)
{
    public int Rank => Communicator.Rank;

    public int WorldSize => Communicator.WorldSize;

    public Device Device { get; } = device;

    /// <summary>Rank 0 reports progress, evaluates the log, writes checkpoints and the adapter.</summary>
    public bool IsMain => Rank == 0;

    public IReplicaCommunicator Communicator { get; } = communicator;

    /// <summary>
    /// The step barrier: waits for every replica, then, once for all, reads the cancellation (so every replica stops at
    /// the same step and none is left waiting in a collective) and runs <paramref name="onAllArrived"/> (rank 0's;
    /// the step's seeding). Throws <see cref="OperationCanceledException"/> on every replica when the run was cancelled.
    /// </summary>
    public void BeginStep(CancellationToken cancellationToken, Action onAllArrived)
    {
        if (group.BeginStep(Rank, cancellationToken, onAllArrived)) throw new OperationCanceledException(cancellationToken);
    }

    /// <summary>This replica's part of every optimizer step (see <see cref="DataParallelSharding.Shard"/>).</summary>
    public StepShare Share => new(Rank, WorldSize);
}

/// <summary>Replica <see cref="Rank"/>'s part of every optimizer step of a run on <see cref="WorldSize"/> devices.</summary>
public readonly record struct StepShare(int Rank, int WorldSize)
{
    /// <summary>This share of an optimizer step's micro-batches (<see cref="DataParallelSharding.Shard"/>).</summary>
    public List<int[]> Of(IReadOnlyList<int[]> window, IReadOnlyList<TrainingExample> rows, BatchLayout layout) =>
        DataParallelSharding.Shard(window, rows, layout, Rank, WorldSize);
}

/// <summary>How the rows of one optimizer step are divided between replicas.</summary>
public static class DataParallelSharding
{
    /// <summary>
    /// Replica <paramref name="rank"/>'s share of an optimizer step's micro-batches. The shares of all ranks are disjoint
    /// and together hold every row of the window once, and no micro-batch of a share has more rows than the window's
    /// largest (the single-device micro-batch: the same memory bound). Balanced by tokens, longest first to the replica
    /// with the fewest so far, since the slowest replica sets the step time; rows keep their order inside a share.
    /// <list type="bullet">
    /// <item>Packed rows (<see cref="BatchLayout.Packed"/>): the window's rows are dealt out one by one and each replica
    /// packs its rows into as few micro-batches as the single-device size allows. With 8 rows x accumulation 2 on two GPUs
    /// each replica trains one micro-batch of 8 rows, as large as the single GPU's, whose tokens differ from the other
    /// replica's by less than a row (dealing the window's two micro-batches whole left them 8.8% apart on the
    /// benchmark's Q&amp;A rows, splitting each in two made micro-batches of half the size, which fill a GPU less).</item>
    /// <item>Rows side by side (<see cref="BatchLayout.LengthGrouped"/>): a micro-batch's rows were grouped for their
    /// similar lengths, so micro-batches go whole where each replica can get the same number of them; otherwise each
    /// micro-batch is split when it has a row for every replica, else dealt whole.</item>
    /// </list>
    /// </summary>
    public static List<int[]> Shard(IReadOnlyList<int[]> window, IReadOnlyList<TrainingExample> rows, BatchLayout layout, int rank, int worldSize)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(rank);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(rank, worldSize);
        if (worldSize == 1) return [.. window];
        if (window.Count == 0) return [];
        if (layout == BatchLayout.Packed) return PackedShare(window, rows, rank, worldSize);
        if (window.Count % worldSize == 0 || window.Any(batch => batch.Length < worldSize))
            return [.. Balanced(window, i => window[i].Sum(r => rows[r].Length), rank, worldSize).Select(i => window[i])];
        return [.. window.Select(batch => Balanced(batch, i => rows[batch[i]].Length, rank, worldSize).Select(i => batch[i]).ToArray())];
    }

    /// <summary>
    /// The window's rows dealt by tokens, each replica taking at most the rows of the fewest micro-batches that hold its
    /// even share (so none packs one micro-batch more than it must), then packed in order into micro-batches of near-equal
    /// row counts, none larger than the window's largest.
    /// </summary>
    private static List<int[]> PackedShare(IReadOnlyList<int[]> window, IReadOnlyList<TrainingExample> rows, int rank, int worldSize)
    {
        int[] all = [.. window.SelectMany(batch => batch)];
        int microBatchRows = window.Max(batch => batch.Length);
        int evenShare = (all.Length + worldSize - 1) / worldSize;
        int microBatches = (evenShare + microBatchRows - 1) / microBatchRows;
        int[] mine = [.. Balanced(all, i => rows[all[i]].Length, rank, worldSize, maxItems: microBatches * microBatchRows).Select(i => all[i])];
        if (mine.Length == 0) return [];
        int count = (mine.Length + microBatchRows - 1) / microBatchRows;
        var share = new List<int[]>(count);
        for (int b = 0, start = 0; b < count; b++)
        {
            int left = count - b, size = (mine.Length - start + left - 1) / left;                  // the rest's even share, rounded up
            share.Add(mine[start..(start + size)]);
            start += size;
        }
        return share;
    }

    /// <summary>
    /// Longest-processing-time-first: the positions of <paramref name="items"/> that fall to <paramref name="rank"/>, in
    /// order; a replica holding <paramref name="maxItems"/> takes no more.
    /// </summary>
    private static IEnumerable<int> Balanced<T>(IReadOnlyList<T> items, Func<int, long> weight, int rank, int worldSize, int maxItems = int.MaxValue)
    {
        var load = new long[worldSize];
        var held = new int[worldSize];
        var owner = new int[items.Count];
        foreach (int i in Enumerable.Range(0, items.Count).OrderByDescending(weight).ThenBy(i => i))
        {
            int least = -1;
            for (int r = 0; r < worldSize; r++)
                if (held[r] < maxItems && (least < 0 || load[r] < load[least])) least = r;
            owner[i] = least;
            load[least] += weight(i);
            held[least]++;
        }
        return Enumerable.Range(0, items.Count).Where(i => owner[i] == rank);
    }
}

/// <summary>
/// NVLink multicast (NVLS) off for NCCL, PyTorch's symmetric memory and NVSHMEM: on a shared machine a program using it
/// can put the host's GPUs out of service. Set in this process's C environment (read by NCCL at init) and in .NET's,
/// which every process the app starts inherits. Set unconditionally: these are not the user's to turn on here.
/// </summary>
public static class MulticastSafety
{
    public static readonly IReadOnlyDictionary<string, string> Variables = new Dictionary<string, string>
    {
        ["NCCL_NVLS_ENABLE"] = "0",
        ["TORCH_SYMM_MEM_DISABLE_MULTICAST"] = "1",
        ["NVSHMEM_DISABLE_NVLS"] = "1",
    };

    public static void Apply()
    {
        foreach (var (name, value) in Variables)
        {
            if (OperatingSystem.IsLinux()) NativeEnvironment.Set(name, value, overwrite: true);
            Environment.SetEnvironmentVariable(name, value);
        }
    }
}
