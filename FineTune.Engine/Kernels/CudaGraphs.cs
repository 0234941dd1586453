using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Kernels;

/// <summary>
/// CUDA graphs and streams through libtorch's own C++ API (at::cuda::CUDAGraph, c10::cuda's current stream), which
/// TorchSharp 0.107 does not wrap: the exported functions are called by their Itanium-mangled names, looked up at run time
/// in the libtorch the backend loaded. A training step of a 7B model issues thousands of small ops, each costing the host
/// 8-11 us (FineTune.Bench profile); the GPU waits on the host. A graph records the step's kernels once and replays them
/// with one launch, as torch.cuda.graph does, with libtorch's graph-aware caching allocator keeping the step's memory in
/// a private pool between replays.
/// <para>
/// The functions are C++: a C++ exception thrown through these calls would end the process (.NET cannot unwind it), so
/// only calls that cannot throw on the paths used here are made, and a capture whose stream was invalidated is ended
/// through the driver (<see cref="CudaGraph.EndCapture"/>) instead of by capture_end, which would throw. Off where a
/// symbol is missing (another libtorch build), on the CPU, with the kernels off, or with FINETUNE_CUDA_GRAPHS=off.
/// </para>
/// </summary>
public static unsafe class CudaGraphs
{
    public const string SwitchVariable = "FINETUNE_CUDA_GRAPHS";

    /// <summary>c10::cuda::CUDAStream by value: c10::Stream { Device { int8 type, int8 index }, int64 id } (16 bytes, two registers).</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct StreamValue
    {
        public long Device;
        public long Id;
    }

    /// <summary>at::cuda::MempoolId_t, std::pair&lt;CaptureId_t, CaptureId_t&gt;: the private memory pool of a graph.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct PoolId
    {
        public ulong First;
        public ulong Second;
    }

    private static readonly Lock Gate = new();
    private static bool _bound;
    private static string _status = "off: not on a CUDA backend";

    private static delegate* unmanaged<sbyte, StreamValue> _getCurrentStream;   // c10::cuda::getCurrentCUDAStream(DeviceIndex)
    private static delegate* unmanaged<StreamValue*, nint> _streamHandle;        // c10::cuda::CUDAStream::stream() const
    private static delegate* unmanaged<byte, sbyte, StreamValue> _streamFromPool; // c10::cuda::getStreamFromPool(bool, DeviceIndex)
    private static delegate* unmanaged<StreamValue, void> _setCurrentStream;     // c10::cuda::setCurrentCUDAStream(CUDAStream)
    private static delegate* unmanaged<void*, byte, void> _graphNewKeep;         // at::cuda::CUDAGraph::CUDAGraph(bool keep_graph)
    private static delegate* unmanaged<void*, void> _graphNew;                   // at::cuda::CUDAGraph::CUDAGraph() (older builds)
    private static delegate* unmanaged<void*, ulong, ulong, int, void> _captureBegin; // capture_begin(MempoolId_t, cudaStreamCaptureMode)
    private static delegate* unmanaged<void*, void> _captureEnd;
    private static delegate* unmanaged<void*, void> _replay;
    private static delegate* unmanaged<void*, void> _graphDelete;                // ~CUDAGraph()
    private static delegate* unmanaged<void*, PoolId> _graphPool;                // MempoolId_t pool()
    private static delegate* unmanaged<nint, int*, ulong*, int> _streamGetCaptureInfo; // cuStreamGetCaptureInfo (driver)
    private static delegate* unmanaged<nint, nint*, int> _streamEndCapture;      // cuStreamEndCapture (driver)
    private static delegate* unmanaged<nint, int> _graphDestroy;                 // cuGraphDestroy (driver)

    /// <summary>True when graphs can be captured: the kernels are on (dropout and the fused ops read their stream here) and
    /// libtorch exports the graph API.</summary>
    public static bool Enabled { get; private set; }

    /// <summary>
    /// For tests and measurements: training without graphs even where they are on (process-wide): the same job op by op,
    /// micro-batches shaped as they would be for graphs (<see cref="Available"/>).
    /// </summary>
    public static bool Suspended { get; set; }

    /// <summary>One line for /healthz and the benchmark: "on: libtorch's CUDAGraph" or "off: why".</summary>
    public static string Status => _status;

    /// <summary>True when a training step on <paramref name="device"/> may be captured.</summary>
    public static bool On(Device device) => Available(device) && !Suspended;

    /// <summary>True when graphs are on for <paramref name="device"/>, suspended or not: a run shapes its micro-batches for them.</summary>
    public static bool Available(Device device) => Enabled && CudaKernels.On(device);

    /// <summary>Binds the API in the libraries of <paramref name="libTorchFolder"/> (or the process's); called by the backend after the kernels started.</summary>
    internal static string Start(string? libTorchFolder)
    {
        lock (Gate)
        {
            if (_bound) return _status;
            _bound = true;
            string? off = Environment.GetEnvironmentVariable(SwitchVariable);
            if (string.Equals(off, "off", StringComparison.OrdinalIgnoreCase) || off == "0") return _status = $"off: {SwitchVariable}={off}";
            if (!CudaKernels.Enabled) return _status = "off: the kernels are off";
            try
            {
                var c10 = Open(libTorchFolder, "libc10_cuda.so");
                var torchCuda = Open(libTorchFolder, "libtorch_cuda.so");
                _getCurrentStream = (delegate* unmanaged<sbyte, StreamValue>)Export(c10, "_ZN3c104cuda20getCurrentCUDAStreamEa");
                _streamHandle = (delegate* unmanaged<StreamValue*, nint>)Export(c10, "_ZNK3c104cuda10CUDAStream6streamEv");
                _streamFromPool = (delegate* unmanaged<byte, sbyte, StreamValue>)Export(c10, "_ZN3c104cuda17getStreamFromPoolEba");
                _setCurrentStream = (delegate* unmanaged<StreamValue, void>)Export(c10, "_ZN3c104cuda20setCurrentCUDAStreamENS0_10CUDAStreamE");
                if (NativeLibrary.TryGetExport(torchCuda, "_ZN2at4cuda9CUDAGraphC1Eb", out var keep)) _graphNewKeep = (delegate* unmanaged<void*, byte, void>)keep;
                else _graphNew = (delegate* unmanaged<void*, void>)Export(torchCuda, "_ZN2at4cuda9CUDAGraphC1Ev");
                _captureBegin = (delegate* unmanaged<void*, ulong, ulong, int, void>)Export(torchCuda, "_ZN2at4cuda9CUDAGraph13capture_beginESt4pairIyyE21cudaStreamCaptureMode");
                _captureEnd = (delegate* unmanaged<void*, void>)Export(torchCuda, "_ZN2at4cuda9CUDAGraph11capture_endEv");
                _replay = (delegate* unmanaged<void*, void>)Export(torchCuda, "_ZN2at4cuda9CUDAGraph6replayEv");
                _graphDelete = (delegate* unmanaged<void*, void>)Export(torchCuda, "_ZN2at4cuda9CUDAGraphD1Ev");
                _graphPool = (delegate* unmanaged<void*, PoolId>)Export(torchCuda, "_ZN2at4cuda9CUDAGraph4poolEv");
                if (!NativeLibrary.TryLoad("libcuda.so.1", out var driver)) throw new EntryPointNotFoundException("libcuda.so.1 was not found");
                _streamGetCaptureInfo = (delegate* unmanaged<nint, int*, ulong*, int>)Export(driver, "cuStreamGetCaptureInfo");
                _streamEndCapture = (delegate* unmanaged<nint, nint*, int>)Export(driver, "cuStreamEndCapture");
                _graphDestroy = (delegate* unmanaged<nint, int>)Export(driver, "cuGraphDestroy");
                Enabled = true;
                return _status = "on: libtorch's CUDAGraph";
            }
            catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
            {
                return _status = $"off: {e.Message}";
            }
        }
    }

    private static nint Open(string? folder, string name)
    {
        if (folder is not null && NativeLibrary.TryLoad(Path.Combine(folder, name), out var inFolder)) return inFolder;
        return NativeLibrary.TryLoad(name, out var library) ? library : throw new DllNotFoundException($"{name} was not found");
    }

    private static nint Export(nint library, string name) =>
        NativeLibrary.TryGetExport(library, name, out var address) ? address : throw new EntryPointNotFoundException($"libtorch has no {name}");

    /// <summary>
    /// The stream libtorch computes on for GPU <paramref name="ordinal"/> on this thread (0, the legacy default stream,
    /// unless a graph is being captured there, or where the API is not bound): FineTune's kernels launch on it so they
    /// order with torch's own and are captured with them.
    /// </summary>
    internal static nint CurrentStream(int ordinal)
    {
        if (!Enabled) return 0;
        var stream = _getCurrentStream((sbyte)ordinal);
        return _streamHandle(&stream);
    }

    private static readonly Dictionary<int, StreamValue> CaptureStreams = [];

    /// <summary>
    /// One side stream per GPU for every capture there, as torch.cuda.graph keeps one: the caching allocator hands a freed
    /// block only to allocations on the stream it was used on, so graphs sharing a pool reuse each other's memory only when
    /// captured on one stream (with a new pool stream per capture, a second Q&amp;A shape took 9.8 GB more on an H200).
    /// </summary>
    private static StreamValue CaptureStream(int ordinal)
    {
        lock (Gate)
        {
            if (!CaptureStreams.TryGetValue(ordinal, out var stream)) CaptureStreams[ordinal] = stream = _streamFromPool(0, (sbyte)ordinal);
            return stream;
        }
    }

    /// <summary>A CUDA graph of libtorch's: captured once from the work <see cref="Capture"/> runs, replayed on the current stream.</summary>
    public sealed class CudaGraph : IDisposable
    {
        private const int ObjectBytes = 4096;     // more than sizeof(at::cuda::CUDAGraph) in any libtorch 2.x
        private const int CaptureModeRelaxed = 2; // cudaStreamCaptureModeRelaxed: the caching allocator may cudaMalloc for the pool
        private void* _graph;
        private bool _captured;

        public CudaGraph()
        {
            if (!Enabled) throw new InvalidOperationException($"CUDA graphs are {_status}.");
            _graph = NativeMemory.AllocZeroed(ObjectBytes);
            if (_graphNewKeep != null) _graphNewKeep(_graph, 0);
            else _graphNew(_graph);
        }

        /// <summary>
        /// Records the kernels <paramref name="work"/> queues on GPU <paramref name="ordinal"/> (nothing runs: call
        /// <see cref="Replay"/> for that), on the GPU's capture stream (<see cref="CaptureStream"/>), as torch.cuda.graph does; the device is
        /// synchronized first so the side stream sees everything queued before. False, with the reason, when the capture
        /// failed (an op that cannot be captured, such as a copy to the host): the graph is then unusable and nothing of the
        /// work ran on the GPU, so the caller runs that work again without a graph. Graphs that share a pool (sharePoolWith)
        /// reuse each other's memory for what they free within the capture: they must not run at the same time, and what
        /// one leaves allocated the others do not touch.
        /// </summary>
        public bool Capture(int ordinal, Action work, out string? failure, CudaGraph? sharePoolWith = null)
        {
            var pool = sharePoolWith is null ? default : sharePoolWith.Pool;
            if (_captured) throw new InvalidOperationException("This graph was captured already.");
            _captured = true;
            failure = null;
            cuda.synchronize(new Device(DeviceType.CUDA, ordinal));
            var previous = _getCurrentStream((sbyte)ordinal);
            var side = CaptureStream(ordinal);
            nint sideHandle = _streamHandle(&side);
            _setCurrentStream(side);
            try
            {
                _captureBegin(_graph, pool.First, pool.Second, CaptureModeRelaxed);
                try
                {
                    work();
                }
                catch (Exception e)
                {
                    failure = e.Message;
                }
                int status;
                ulong id;
                if (_streamGetCaptureInfo(sideHandle, &status, &id) != 0 || status != 1) // CU_STREAM_CAPTURE_STATUS_ACTIVE
                    failure ??= "the capture was invalidated by an operation that cannot be captured";
                if (failure is null)
                {
                    _captureEnd(_graph);
                    return true;
                }
                EndCapture(sideHandle);
                return false;
            }
            finally
            {
                _setCurrentStream(previous);
            }
        }

        /// <summary>
        /// Ends a failed capture through the driver (capture_end would throw): the stream leaves capture mode, and the
        /// allocator, whose pool filter asks whether the stream still captures, allocates normally again. The graph object
        /// is left as it is (its destructor expects a finished capture) and its pool is not reused.
        /// </summary>
        private void EndCapture(nint stream)
        {
            nint partial = 0;
            _streamEndCapture(stream, &partial);
            if (partial != 0) _graphDestroy(partial);
            _graph = null; // leaked on purpose: see above
        }

        /// <summary>The graph's private memory pool, which later captures may share (<see cref="Capture"/>'s sharePoolWith).</summary>
        internal PoolId Pool => _graph != null && _captured ? _graphPool(_graph) : throw new InvalidOperationException("The graph has no successful capture.");

        /// <summary>Runs the captured kernels again on the current stream, reading and writing the same memory as the capture.</summary>
        public void Replay()
        {
            if (_graph == null || !_captured) throw new InvalidOperationException("The graph has no successful capture.");
            _replay(_graph);
        }

        public void Dispose()
        {
            if (_graph == null) return;
            _graphDelete(_graph);
            NativeMemory.Free(_graph);
            _graph = null;
        }
    }
}
