using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Distributed;

/// <summary>
/// One replica's end of the collectives data-parallel training uses. Every replica calls the same operations in the
/// same order (NCCL's rule); the tensors are contiguous, on the replica's device, fp32 or fp64.
/// </summary>
public interface IReplicaCommunicator : IDisposable
{
    int Rank { get; }
    int WorldSize { get; }

    /// <summary>Replaces each tensor by its sum over the replicas, in place; the tensors go as one group.</summary>
    void AllReduceSum(params Tensor[] tensors);

    /// <summary>Overwrites <paramref name="tensor"/> on every replica with root's.</summary>
    void Broadcast(Tensor tensor, int root = 0);

    /// <summary>Ends the operations in flight or waiting (a peer failed and will not come); the communicator is unusable afterwards.</summary>
    void Abort();
}

/// <summary>
/// NCCL over the replica's GPU. The collectives are queued on libtorch's default stream of that GPU (stream 0, the
/// legacy default stream: TorchSharp 0.107 has no stream API, so every kernel of this replica runs there): the
/// all-reduce starts after backward's last kernel and the optimizer's first kernel waits for it, with no host wait.
/// <para>
/// Made together for all ranks (<see cref="CreateGroup"/>), used by the replica's thread, aborted by whichever thread
/// sees a failure first. The connections between ranks are made at init (NCCL_RUNTIME_CONNECT=0, set by the group),
/// so a collective call only queues work and never waits on the host for a peer; a collective whose peer failed
/// waits on the device instead, where <see cref="Abort"/> ends it. The gate keeps an abort from freeing the
/// communicator in the middle of the owner's call.
/// </para>
/// </summary>
public sealed class NcclCommunicator : IReplicaCommunicator
{
    private const nint DefaultStream = 0;

    /// <summary>How long an abort waits for the owner's NCCL call to return before aborting anyway (NCCL's abort flag ends a blocked call).</summary>
    private static readonly TimeSpan AbortGateWait = TimeSpan.FromSeconds(10);

    private readonly Lock _gate = new();
    private nint _comm;

    private NcclCommunicator(int rank, int worldSize, int cudaDevice, nint comm)
    {
        Rank = rank;
        WorldSize = worldSize;
        CudaDevice = cudaDevice;
        _comm = comm;
    }

    /// <summary>One communicator per GPU of <paramref name="cudaDevices"/>, rank = position, all joined (<see cref="Nccl.InitRanks"/>).</summary>
    internal static IReadOnlyList<NcclCommunicator> CreateGroup(IReadOnlyList<int> cudaDevices)
    {
        var comms = Nccl.InitRanks(cudaDevices);
        return [.. comms.Select((comm, rank) => new NcclCommunicator(rank, comms.Length, cudaDevices[rank], comm))];
    }

    public int Rank { get; }
    public int WorldSize { get; }
    public int CudaDevice { get; }

    public void AllReduceSum(params Tensor[] tensors)
    {
        lock (_gate)
        {
            nint comm = Live();
            Nccl.GroupStart();
            try
            {
                foreach (var t in tensors)
                {
                    nint data = TensorMemory.DataPointer(Checked(t));
                    Nccl.AllReduce(data, data, t.numel(), TypeOf(t), Nccl.ReduceOp.Sum, comm, DefaultStream);
                }
            }
            finally
            {
                Nccl.GroupEnd();
            }
        }
    }

    public void Broadcast(Tensor tensor, int root = 0)
    {
        lock (_gate)
        {
            nint data = TensorMemory.DataPointer(Checked(tensor));
            Nccl.Broadcast(data, data, tensor.numel(), TypeOf(tensor), root, Live(), DefaultStream);
        }
    }

    public void Abort()
    {
        bool entered = _gate.TryEnter(AbortGateWait);
        try
        {
            nint comm = Interlocked.Exchange(ref _comm, 0);
            if (comm != 0) Nccl.Abort(comm);
        }
        finally
        {
            if (entered) _gate.Exit();
        }
    }

    public void Dispose()
    {
        lock (_gate)
        {
            nint comm = Interlocked.Exchange(ref _comm, 0);
            if (comm != 0) Nccl.Destroy(comm);
        }
    }

    private nint Live()
    {
        nint comm = _comm;
        return comm != 0 ? comm : throw new NcclException($"NCCL rank {Rank}: the communicator was aborted (another replica failed or the run was cancelled).");
    }

    private Tensor Checked(Tensor t)
    {
        if (t.device.type != DeviceType.CUDA || t.device.index != CudaDevice)
            throw new ArgumentException($"NCCL rank {Rank} works on cuda:{CudaDevice}; a tensor is on {t.device}.");
        if (!t.is_contiguous()) throw new ArgumentException("NCCL needs contiguous tensors.");
        return t;
    }

    private static Nccl.DataType TypeOf(Tensor t) => t.dtype switch
    {
        ScalarType.Float32 => Nccl.DataType.Float32,
        ScalarType.Float64 => Nccl.DataType.Float64,
        _ => throw new ArgumentException($"Only fp32 and fp64 tensors are reduced here; got {t.dtype}."),
    };
}

/// <summary>
/// The same collectives between threads of this process, through host memory: the replicas of a data-parallel run on
/// CPU devices (the tests of the data-parallel logic on machines without GPUs). Each replica sums the posted tensors
/// in rank order itself, so every replica gets bitwise the same sum.
/// </summary>
public sealed class HostCommunicator : IReplicaCommunicator
{
    private readonly Shared _shared;

    private HostCommunicator(Shared shared, int rank)
    {
        _shared = shared;
        Rank = rank;
    }

    /// <summary>One communicator per rank, all joined.</summary>
    public static IReadOnlyList<HostCommunicator> CreateGroup(int worldSize)
    {
        var shared = new Shared(worldSize);
        return [.. Enumerable.Range(0, worldSize).Select(rank => new HostCommunicator(shared, rank))];
    }

    public int Rank { get; }
    public int WorldSize => _shared.Posted.Length;

    public void AllReduceSum(params Tensor[] tensors)
    {
        using var _ = no_grad();
        _shared.Posted[Rank] = tensors;
        _shared.Wait();                       // every replica has posted
        var sums = new Tensor[tensors.Length];
        for (int i = 0; i < tensors.Length; i++)
        {
            sums[i] = zeros_like(tensors[i]).DetachFromDisposeScope();
            for (int r = 0; r < WorldSize; r++) sums[i].add_(_shared.Posted[r][i].to(tensors[i].device));
        }
        _shared.Wait();                       // every replica has read every input
        for (int i = 0; i < tensors.Length; i++)
        {
            tensors[i].copy_(sums[i]);
            sums[i].Dispose();
        }
    }

    public void Broadcast(Tensor tensor, int root = 0)
    {
        using var _ = no_grad();
        _shared.Posted[Rank] = [tensor];
        _shared.Wait();
        if (Rank != root) tensor.copy_(_shared.Posted[root][0].to(tensor.device));
        _shared.Wait();
    }

    public void Abort() => _shared.Abort();

    public void Dispose()
    {
    }

    private sealed class Shared(int worldSize)
    {
        private readonly Barrier _barrier = new(worldSize);
        private readonly CancellationTokenSource _aborted = new();
        public readonly Tensor[][] Posted = new Tensor[worldSize][];

        public void Wait() => _barrier.SignalAndWait(_aborted.Token);

        public void Abort() => _aborted.Cancel();
    }
}

/// <summary>Where a tensor's first element lives (device or host memory), for native libraries that take raw buffers.</summary>
internal static unsafe class TensorMemory
{
    private static readonly Lazy<(nint DataPtr, nint StorageOffset)> Exports = new(() =>
    {
        if (!NativeLibrary.TryLoad("LibTorchSharp", typeof(torch).Assembly, null, out var library)
            && !NativeLibrary.TryLoad("libLibTorchSharp.so", out library))
            throw new DllNotFoundException("libLibTorchSharp could not be found to read tensors' data pointers.");
        return (NativeLibrary.GetExport(library, "THSStorage_data_ptr"), NativeLibrary.GetExport(library, "THSTensor_storage_offset"));
    });

    /// <summary>THSStorage_data_ptr + storage_offset × element size (TorchSharp's own exports).</summary>
    public static nint DataPointer(Tensor t)
    {
        var (dataPtr, storageOffset) = Exports.Value;
        nint storage = ((delegate* unmanaged<nint, nint>)dataPtr)(t.Handle);
        long offset = ((delegate* unmanaged<nint, long>)storageOffset)(t.Handle);
        return storage + (nint)(offset * t.ElementSize);
    }
}
