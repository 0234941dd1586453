using System.Runtime.InteropServices;
using FineTune.Engine.Backend;

namespace FineTune.Engine.Distributed;

/// <summary>An NCCL call failed; the message names the call and NCCL's own words.</summary>
public sealed class NcclException(string message) : InvalidOperationException(message);

/// <summary>
/// The few NCCL calls data-parallel training needs (nccl.h, NCCL 2.x), reached by P/Invoke. libnccl.so.2 is the one
/// PyTorch's CUDA builds link to: libtorch_cuda.so loads it, so once <see cref="ComputeBackend"/> has loaded libtorch the
/// soname resolves to that copy. Otherwise it is looked for in the torch wheel's nvidia/nccl/lib (FINETUNE_LIBTORCH/../../nvidia),
/// or named by FINETUNE_NCCL.
/// </summary>
internal static unsafe class Nccl
{
    public const string LibraryVariable = "FINETUNE_NCCL";

    /// <summary>ncclUniqueId: 128 opaque bytes made by rank 0 and handed to every rank (the rendezvous).</summary>
    [StructLayout(LayoutKind.Sequential)]
    public struct UniqueId
    {
        public fixed byte Internal[128];
    }

    public enum DataType
    {
        Float32 = 7,  // ncclFloat32
        Float64 = 8,  // ncclFloat64
    }

    public enum ReduceOp
    {
        Sum = 0,      // ncclSum
    }

    private static readonly Lazy<nint> Handle = new(LoadNccl);

    private static nint Export(string name) => NativeLibrary.GetExport(Handle.Value, name);

    // Signatures as in nccl.h; ncclComm_t and cudaStream_t are pointers, ncclResult_t/ncclDataType_t/ncclRedOp_t ints.
    private static int ncclGetVersion(out int version) { fixed (int* v = &version) return ((delegate* unmanaged<int*, int>)Export(nameof(ncclGetVersion)))(v); }
    private static int ncclGetUniqueId(out UniqueId id) { fixed (UniqueId* i = &id) return ((delegate* unmanaged<UniqueId*, int>)Export(nameof(ncclGetUniqueId)))(i); }
    private static int ncclCommInitRank(nint* comm, int nranks, UniqueId id, int rank) => ((delegate* unmanaged<nint*, int, UniqueId, int, int>)Export(nameof(ncclCommInitRank)))(comm, nranks, id, rank);
    private static int ncclCommDestroy(nint comm) => ((delegate* unmanaged<nint, int>)Export(nameof(ncclCommDestroy)))(comm);
    private static int ncclCommAbort(nint comm) => ((delegate* unmanaged<nint, int>)Export(nameof(ncclCommAbort)))(comm);
    private static int ncclAllReduce(nint sendbuff, nint recvbuff, nuint count, DataType datatype, ReduceOp op, nint comm, nint stream) =>
        ((delegate* unmanaged<nint, nint, nuint, int, int, nint, nint, int>)Export(nameof(ncclAllReduce)))(sendbuff, recvbuff, count, (int)datatype, (int)op, comm, stream);
    private static int ncclBroadcast(nint sendbuff, nint recvbuff, nuint count, DataType datatype, int root, nint comm, nint stream) =>
        ((delegate* unmanaged<nint, nint, nuint, int, int, nint, nint, int>)Export(nameof(ncclBroadcast)))(sendbuff, recvbuff, count, (int)datatype, root, comm, stream);
    private static int ncclGroupStart() => ((delegate* unmanaged<int>)Export(nameof(ncclGroupStart)))();
    private static int ncclGroupEnd() => ((delegate* unmanaged<int>)Export(nameof(ncclGroupEnd)))();
    private static nint ncclGetErrorString(int result) => ((delegate* unmanaged<int, nint>)Export(nameof(ncclGetErrorString)))(result);

    public static int Version()
    {
        Check(ncclGetVersion(out int version), nameof(ncclGetVersion));
        return version;
    }

    public static UniqueId NewUniqueId()
    {
        Check(ncclGetUniqueId(out var id), nameof(ncclGetUniqueId));
        return id;
    }

    /// <summary>
    /// The communicators of every rank of this process, one per GPU of <paramref name="cudaDevices"/> (rank = position),
    /// made on the calling thread in one NCCL group: ncclCommInitRank per GPU between ncclGroupStart and ncclGroupEnd, as
    /// ncclCommInitAll does. Made before any replica thread starts, so no rank can wait in ncclCommInitRank for a peer
    /// whose thread failed first, and every communicator exists for <see cref="Abort"/> from the start. The unique id is
    /// the same rendezvous that separate processes (or machines) would share (docs/scale.md). Leaves the calling thread
    /// on the device it had.
    /// </summary>
    public static nint[] InitRanks(IReadOnlyList<int> cudaDevices)
    {
        int worldSize = cudaDevices.Count;
        var id = NewUniqueId();
        int previousDevice = CudaRuntime.CurrentDevice();
        // NCCL writes each handle when its rank's init is queued; native memory stays put until the group has ended.
        var handles = (nint*)NativeMemory.AllocZeroed((nuint)worldSize, (nuint)sizeof(nint));
        try
        {
            int failure = 0;
            string failedCall = nameof(ncclCommInitRank);
            Check(ncclGroupStart(), nameof(ncclGroupStart));
            try
            {
                for (int rank = 0; rank < worldSize && failure == 0; rank++)
                {
                    CudaRuntime.SetDevice(cudaDevices[rank]);                    // ncclCommInitRank joins the current device
                    failure = ncclCommInitRank(handles + rank, worldSize, id, rank);
                }
            }
            finally
            {
                int end = ncclGroupEnd();                                      // the inits run here, together
                if (failure == 0 && end != 0) (failure, failedCall) = (end, nameof(ncclGroupEnd));
            }
            Check(failure, failedCall);
            var comms = new nint[worldSize];
            for (int rank = 0; rank < worldSize; rank++) comms[rank] = handles[rank];
            return comms;
        }
        catch
        {
            for (int rank = 0; rank < worldSize; rank++) if (handles[rank] != 0) ncclCommAbort(handles[rank]);
            throw;
        }
        finally
        {
            NativeMemory.Free(handles);
            if (previousDevice >= 0) CudaRuntime.SetDevice(previousDevice);
        }
    }

    public static void Destroy(nint comm) => Check(ncclCommDestroy(comm), nameof(ncclCommDestroy));

    /// <summary>
    /// Stops the communicator's operations in flight, on the device too (a collective waiting for a peer that failed ends),
    /// and frees it; in one process NCCL frees the shared resources once every rank's communicator is destroyed or aborted.
    /// </summary>
    public static void Abort(nint comm) => ncclCommAbort(comm);

    public static void AllReduce(nint send, nint receive, long count, DataType type, ReduceOp op, nint comm, nint stream) =>
        Check(ncclAllReduce(send, receive, (nuint)count, type, op, comm, stream), nameof(ncclAllReduce));

    public static void Broadcast(nint send, nint receive, long count, DataType type, int root, nint comm, nint stream) =>
        Check(ncclBroadcast(send, receive, (nuint)count, type, root, comm, stream), nameof(ncclBroadcast));

    public static void GroupStart() => Check(ncclGroupStart(), nameof(ncclGroupStart));

    public static void GroupEnd() => Check(ncclGroupEnd(), nameof(ncclGroupEnd));

    private static void Check(int result, string call)
    {
        if (result == 0) return;
        string? text = Marshal.PtrToStringUTF8(ncclGetErrorString(result));
        throw new NcclException($"{call} failed: {text ?? "error " + result} (NCCL_DEBUG=INFO in the environment says more).");
    }

    private static nint LoadNccl()
    {
        if (Environment.GetEnvironmentVariable(LibraryVariable) is { Length: > 0 } named) return NativeLibrary.Load(named);
        if (NativeLibrary.TryLoad("libnccl.so.2", out var handle)) return handle;
        foreach (string candidate in NvidiaWheelLibraries("libnccl.so.2"))
            if (NativeLibrary.TryLoad(candidate, out handle)) return handle;
        throw new DllNotFoundException(
            $"libnccl.so.2 was not found. It ships with PyTorch's CUDA wheels (site-packages/nvidia/nccl/lib); set {LibraryVariable} to its path or {ComputeBackend.LibTorchVariable} to torch's lib folder.");
    }

    /// <summary>Files called <paramref name="fileName"/> under the torch wheel's sibling nvidia/ folder (FINETUNE_LIBTORCH/../../nvidia).</summary>
    internal static IEnumerable<string> NvidiaWheelLibraries(string fileName)
    {
        string? torchLib = Environment.GetEnvironmentVariable(ComputeBackend.LibTorchVariable);
        if (string.IsNullOrWhiteSpace(torchLib)) yield break;
        string nvidia = Path.GetFullPath(Path.Combine(torchLib, "..", "..", "nvidia"));
        if (!Directory.Exists(nvidia)) yield break;
        foreach (string file in Directory.EnumerateFiles(nvidia, fileName, SearchOption.AllDirectories)) yield return file;
    }
}

/// <summary>
/// cudaSetDevice / cudaGetDevice of the CUDA runtime that libtorch_cuda.so loaded: which GPU the calling thread's
/// CUDA calls go to. TorchSharp 0.107 has no torch.cuda.set_device; tensors named with a device index are placed there
/// anyway, but NCCL joins the thread's current device and libtorch's cuda.synchronize() waits for it.
/// </summary>
internal static unsafe class CudaRuntime
{
    private static readonly Lazy<nint> Handle = new(Load);

    public static void SetDevice(int device)
    {
        int result = ((delegate* unmanaged<int, int>)NativeLibrary.GetExport(Handle.Value, "cudaSetDevice"))(device);
        if (result != 0) throw new InvalidOperationException($"cudaSetDevice({device}) failed with CUDA error {result}.");
    }

    public static int CurrentDevice()
    {
        int device;
        return ((delegate* unmanaged<int*, int>)NativeLibrary.GetExport(Handle.Value, "cudaGetDevice"))(&device) == 0 ? device : -1;
    }

    private static nint Load()
    {
        // Already in the process when libtorch_cuda.so is: dlopen of the soname returns that copy.
        foreach (string soname in new[] { "libcudart.so.13", "libcudart.so.12", "libcudart.so" })
            if (NativeLibrary.TryLoad(soname, out var handle)) return handle;
        foreach (string major in new[] { "13", "12" })
            foreach (string candidate in Nccl.NvidiaWheelLibraries("libcudart.so." + major))
                if (NativeLibrary.TryLoad(candidate, out var handle)) return handle;
        throw new DllNotFoundException("The CUDA runtime (libcudart.so.13 or .12) was not found; it ships with PyTorch's CUDA wheels.");
    }
}
