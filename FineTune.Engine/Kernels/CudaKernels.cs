using System.Reflection;
using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Kernels;

/// <summary>
/// FineTune's own CUDA kernels (finetune_kernels.cu): compiled with NVRTC when the CUDA backend starts, cached as a
/// cubin (or PTX) in <see cref="CacheFolder"/> under the GPU architecture and a hash of the source, loaded and launched
/// through the CUDA driver API on TorchSharp tensors' device pointers, on libtorch's current stream (CUDA's legacy default
/// stream unless a CUDA graph is being captured: <see cref="CudaGraphs"/>), so launches order with torch's own kernels.
/// Loaded into every GPU's primary context (the context libtorch computes in) at that GPU's first use, so the replicas
/// of a data-parallel run, one thread per GPU, launch on their own GPU; a launch runs in the context of the GPU its
/// tensors live on, whichever context the calling thread has current.
/// Off on the CPU, where NVRTC or the driver is missing, when compilation fails, or with FINETUNE_KERNELS=off; every
/// caller then takes its torch-op fallback (<see cref="FusedOps"/>). A GPU whose module cannot load takes the fallback
/// alone.
/// </summary>
public static unsafe class CudaKernels
{
    public const string SwitchVariable = "FINETUNE_KERNELS";
    public const string NvrtcVariable = "FINETUNE_NVRTC";
    public const string CacheVariable = "FINETUNE_KERNEL_CACHE";
    private const string SourceResource = "FineTune.Engine.Kernels.finetune_kernels.cu";

    private static readonly Lock Gate = new();
    private static PerDevice<DeviceModule>? _modules;
    private static readonly Dictionary<int, (byte[] Image, string Description)> Images = []; // by architecture (major * 10 + minor)
    private static string[] _options = [];
    private static string _source = "";
    private static string _folder = "";
    private static int _nvrtcMajor, _nvrtcMinor;

    /// <summary>True once the kernels are compiled and loaded; false on the CPU and wherever they are off.</summary>
    public static bool Enabled { get; private set; }

    /// <summary>One line for /healthz: "on: NVRTC 13.0, sm_90 (cubin, cached)" or "off: why".</summary>
    public static string Status { get; private set; } = "off: not on a CUDA backend";

    /// <summary>Where compiled kernels are kept; the web app points it into its data folder before the backend starts.</summary>
    public static string? CacheFolder { get; set; }

    /// <summary>For tests: run with the kernels off (true) or back on (false, only where they loaded).</summary>
    internal static bool Suspended { get; set; }

    /// <summary>True when a kernel may run on tensors of <paramref name="device"/>: a GPU whose context holds the
    /// kernels (loaded here at the GPU's first use; a GPU where that failed takes the torch ops).</summary>
    public static bool On(Device device) =>
        Enabled && !Suspended && Ordinal(device) is int ordinal && _modules?.Get(ordinal) is not null;

    /// <summary>The GPU ordinal of a CUDA device; null for other devices. A tensor's device always names its GPU; an
    /// index-less "cuda" (torch.CUDA, the backend's device) is GPU 0, where libtorch puts its tensors unless a thread
    /// chose another GPU.</summary>
    internal static int? Ordinal(Device device) => device.type == DeviceType.CUDA ? Math.Max(0, (int)device.index) : null;

    /// <summary>Why the kernels are off on GPU <paramref name="ordinal"/>, or null where they are on (or not tried yet).</summary>
    public static string? FailureOn(int ordinal) => _modules?.Failure(ordinal);

    /// <summary>
    /// Finds NVRTC and the driver, compiles (or takes from the cache) and loads the kernels for GPU 0; the other GPUs
    /// load the same image (or their architecture's) at their first use. Called once by
    /// <see cref="Backend.ComputeBackend"/> after libtorch's CUDA start; <paramref name="libTorchFolder"/> is the
    /// folder libtorch came from (NVRTC is looked for beside it), or null.
    /// </summary>
    internal static string Start(string? libTorchFolder)
    {
        lock (Gate)
        {
            if (Enabled) return Status;
            string? off = Environment.GetEnvironmentVariable(SwitchVariable);
            if (string.Equals(off, "off", StringComparison.OrdinalIgnoreCase) || off == "0")
                return Status = $"off: {SwitchVariable}={off}";
            try
            {
                Status = Load(libTorchFolder);
                Enabled = true;
            }
            catch (Exception e) when (e is KernelException or DllNotFoundException or EntryPointNotFoundException or IOException or UnauthorizedAccessException)
            {
                Status = $"off: {e.Message}";
            }
            return Status;
        }
    }

    private static string Load(string? libTorchFolder)
    {
        Driver.Open();
        Check(Driver.Init(0), "cuInit");
        int count;
        Check(Driver.DeviceGetCount(&count), "cuDeviceGetCount");
        if (count <= 0) throw new KernelException("the CUDA driver sees no GPU");

        string nvrtcPath = Nvrtc.Open(libTorchFolder);
        Nvrtc.Version(out _nvrtcMajor, out _nvrtcMinor);
        _source = ReadSource();
        _folder = CacheFolder ?? DefaultCacheFolder();
        _modules = new PerDevice<DeviceModule>(count, LoadOn);
        // GPU 0 now, so /healthz reports a compile failure at start; the others when first used.
        if (_modules.Get(0) is not { } first) throw new KernelException(_modules.Failure(0)!);
        return $"on: NVRTC {_nvrtcMajor}.{_nvrtcMinor} ({Path.GetFileName(nvrtcPath)}), {first.Description} in {_folder}";
    }

    /// <summary>The kernels' module in GPU <paramref name="ordinal"/>'s primary context (compiled for its architecture or taken from the cache).</summary>
    private static (DeviceModule? Module, string? Failure) LoadOn(int ordinal)
    {
        try
        {
            int device, major, minor;
            Check(Driver.DeviceGet(&device, ordinal), "cuDeviceGet");
            Check(Driver.DeviceGetAttribute(&major, 75, device), "compute capability"); // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR
            Check(Driver.DeviceGetAttribute(&minor, 76, device), "compute capability"); // ..._MINOR
            var (image, description) = ImageFor(major * 10 + minor);
            nint context, module, popped;
            Check(Driver.PrimaryCtxRetain(&context, device), "cuDevicePrimaryCtxRetain");
            // Loaded with the GPU's context pushed, whatever the calling thread had current, and that one restored.
            Check(Driver.CtxPushCurrent(context), "cuCtxPushCurrent");
            try
            {
                fixed (byte* data = image) Check(Driver.ModuleLoadData(&module, data), "cuModuleLoadData");
            }
            finally
            {
                Driver.CtxPopCurrent(&popped);
            }
            return (new DeviceModule(ordinal, context, module, description), null);
        }
        catch (Exception e) when (e is KernelException or IOException or UnauthorizedAccessException)
        {
            return (null, $"GPU {ordinal}: {e.Message}");
        }
    }

    /// <summary>The compiled kernels for architecture <paramref name="deviceArch"/>: from this process, the cache, or NVRTC.</summary>
    private static (byte[] Image, string Description) ImageFor(int deviceArch)
    {
        int[] supported = Nvrtc.SupportedArchitectures();
        // A cubin for the device's own architecture; for a GPU newer than this NVRTC, PTX of the newest it knows,
        // which the driver compiles for the device.
        int arch = supported.Length == 0 || supported.Contains(deviceArch) ? deviceArch : supported.Where(a => a <= deviceArch).DefaultIfEmpty(0).Max();
        if (arch == 0) throw new KernelException($"NVRTC {_nvrtcMajor}.{_nvrtcMinor} cannot compile for sm_{deviceArch}");
        bool cubin = arch == deviceArch;
        string target = cubin ? $"sm_{arch}" : $"compute_{arch}";
        lock (Images)
        {
            if (Images.TryGetValue(deviceArch, out var loaded)) return loaded;
            string[] options = [$"--gpu-architecture={target}", "--fmad=false", "--std=c++17", "-default-device"];
            string key = Convert.ToHexString(SHA256.HashData(Encoding.UTF8.GetBytes($"{_source}\n{string.Join(' ', options)}\nnvrtc {_nvrtcMajor}.{_nvrtcMinor}")))[..16].ToLowerInvariant();
            string cachePath = Path.Combine(_folder, $"{target}-{key}.{(cubin ? "cubin" : "ptx")}");
            bool fromCache = File.Exists(cachePath);
            byte[] image = fromCache ? File.ReadAllBytes(cachePath) : Nvrtc.Compile(_source, options, cubin);
            if (!fromCache) TryWrite(cachePath, image);
            return Images[deviceArch] = (image, $"{target}{(fromCache ? ", cached" : ", compiled")}");
        }
    }

    public static string DefaultCacheFolder() =>
        Environment.GetEnvironmentVariable(CacheVariable) is { Length: > 0 } folder
            ? folder
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create), "FineTune", "kernels");

    private static string ReadSource()
    {
        using var stream = typeof(CudaKernels).Assembly.GetManifestResourceStream(SourceResource)
            ?? throw new KernelException($"the kernel source {SourceResource} is not embedded in {typeof(CudaKernels).Assembly.GetName().Name}");
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }

    /// <summary>Writes through a temporary file, so two processes starting together never load half a file.</summary>
    private static void TryWrite(string path, byte[] image)
    {
        try
        {
            Directory.CreateDirectory(Path.GetDirectoryName(path)!);
            string temporary = $"{path}.{Environment.ProcessId}.tmp";
            File.WriteAllBytes(temporary, image);
            File.Move(temporary, path, overwrite: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // An unwritable cache only costs a compile at the next start.
        }
    }

    /// <summary>
    /// Launches <paramref name="name"/> on libtorch's current stream of <paramref name="device"/> (the legacy default
    /// stream, or the side stream a CUDA graph is being captured on: <see cref="CudaGraphs.CurrentStream"/>), in its context (the GPU the
    /// tensors in <paramref name="arguments"/> live on; <see cref="On"/> said yes for it). libtorch makes a GPU's
    /// primary context current on the threads that compute on it, so the context is usually current already; where
    /// it is not (a thread that computed on another GPU, or not at all yet), it is pushed for the launch and popped.
    /// </summary>
    internal static void Launch(Device device, string name, long gridX, int blockX, void** arguments)
    {
        if (gridX <= 0) return;
        if (gridX > int.MaxValue) throw new ArgumentOutOfRangeException(nameof(gridX), $"{name}: {gridX} blocks are more than one launch takes.");
        var module = (Ordinal(device) is int ordinal ? _modules?.Get(ordinal) : null)
            ?? throw new InvalidOperationException($"{name}: the kernels are not loaded on {device}.");
        nint function = module.Function(name);
        nint current;
        bool push = Driver.CtxGetCurrent(&current) != 0 || current != module.Context;
        if (push) Check(Driver.CtxPushCurrent(module.Context), "cuCtxPushCurrent");
        try
        {
            Check(Driver.LaunchKernel(function, (uint)gridX, 1, 1, (uint)blockX, 1, 1, 0, CudaGraphs.CurrentStream(module.Ordinal), arguments, null), name);
        }
        finally
        {
            if (push) Driver.CtxPopCurrent(&current);
        }
    }

    /// <summary>The kernels loaded in one GPU's primary context, and the functions looked up in it so far.</summary>
    private sealed class DeviceModule(int ordinal, nint context, nint module, string description)
    {
        private readonly Dictionary<string, nint> _functions = [];

        public int Ordinal { get; } = ordinal;

        public nint Context { get; } = context;

        public string Description { get; } = description;

        public nint Function(string name)
        {
            lock (_functions)
            {
                if (_functions.TryGetValue(name, out var f)) return f;
                nint function;
                Check(Driver.ModuleGetFunction(&function, module, name), $"cuModuleGetFunction({name})");
                _functions[name] = function;
                return function;
            }
        }
    }

    /// <summary>Whether two tensors are on one device (TorchSharp's Device is a class: == compares references).</summary>
    internal static bool SameDevice(Tensor a, Tensor b) => a.device_type == b.device_type && a.device_index == b.device_index;

    /// <summary>The tensor's device address (its data_ptr, storage offset included).</summary>
    internal static ulong Pointer(Tensor t) => (ulong)THSTensor_data(t.Handle);

    [DllImport("LibTorchSharp")]
    private static extern nint THSTensor_data(nint handle);

    private static void Check(int result, string what)
    {
        if (result == 0) return;
        throw new KernelException($"{what} failed: CUDA error {result} ({Driver.ErrorName(result)})");
    }

    private sealed class KernelException(string message) : Exception(message);

    /// <summary>The CUDA driver API (libcuda, shipped with every NVIDIA driver), looked up at run time.</summary>
    private static class Driver
    {
        private static nint _library;
        public static delegate* unmanaged<uint, int> Init;
        public static delegate* unmanaged<int*, int> DeviceGetCount;
        public static delegate* unmanaged<int*, int, int> DeviceGet;
        public static delegate* unmanaged<int*, int, int, int> DeviceGetAttribute;
        public static delegate* unmanaged<nint*, int, int> PrimaryCtxRetain;
        public static delegate* unmanaged<nint*, int> CtxGetCurrent;
        public static delegate* unmanaged<nint, int> CtxPushCurrent;
        public static delegate* unmanaged<nint*, int> CtxPopCurrent;
        public static delegate* unmanaged<nint*, byte*, int> ModuleLoadData;
        public static delegate* unmanaged<nint*, nint, byte*, int> ModuleGetFunctionRaw;
        public static delegate* unmanaged<nint, uint, uint, uint, uint, uint, uint, uint, nint, void**, void**, int> LaunchKernel;
        private static delegate* unmanaged<int, byte**, int> _getErrorName;

        public static void Open()
        {
            if (_library != 0) return;
            if (!NativeLibrary.TryLoad("libcuda.so.1", out var library) && !NativeLibrary.TryLoad("nvcuda.dll", out library))
                throw new KernelException("the CUDA driver library (libcuda.so.1) was not found");
            Init = (delegate* unmanaged<uint, int>)Export(library, "cuInit");
            DeviceGetCount = (delegate* unmanaged<int*, int>)Export(library, "cuDeviceGetCount");
            DeviceGet = (delegate* unmanaged<int*, int, int>)Export(library, "cuDeviceGet");
            DeviceGetAttribute = (delegate* unmanaged<int*, int, int, int>)Export(library, "cuDeviceGetAttribute");
            PrimaryCtxRetain = (delegate* unmanaged<nint*, int, int>)Export(library, "cuDevicePrimaryCtxRetain");
            CtxGetCurrent = (delegate* unmanaged<nint*, int>)Export(library, "cuCtxGetCurrent");
            CtxPushCurrent = (delegate* unmanaged<nint, int>)Export(library, "cuCtxPushCurrent_v2");
            CtxPopCurrent = (delegate* unmanaged<nint*, int>)Export(library, "cuCtxPopCurrent_v2");
            ModuleLoadData = (delegate* unmanaged<nint*, byte*, int>)Export(library, "cuModuleLoadData");
            ModuleGetFunctionRaw = (delegate* unmanaged<nint*, nint, byte*, int>)Export(library, "cuModuleGetFunction");
            LaunchKernel = (delegate* unmanaged<nint, uint, uint, uint, uint, uint, uint, uint, nint, void**, void**, int>)Export(library, "cuLaunchKernel");
            _getErrorName = (delegate* unmanaged<int, byte**, int>)Export(library, "cuGetErrorName");
            _library = library;
        }

        public static int ModuleGetFunction(nint* function, nint module, string name)
        {
            byte[] bytes = Encoding.ASCII.GetBytes(name + "\0");
            fixed (byte* p = bytes) return ModuleGetFunctionRaw(function, module, p);
        }

        public static string ErrorName(int result)
        {
            if (_getErrorName == null) return "?";
            byte* name;
            return _getErrorName(result, &name) == 0 && name != null ? Marshal.PtrToStringUTF8((nint)name) ?? "?" : "?";
        }
    }

    private static nint Export(nint library, string name) =>
        NativeLibrary.TryGetExport(library, name, out var address) ? address : throw new KernelException($"the CUDA library has no {name}");

    /// <summary>NVRTC, CUDA's run-time compiler: PyTorch's CUDA wheels ship it (nvidia/cu13/lib or nvidia/cuda_nvrtc/lib
    /// beside torch), so do libtorch's CUDA archives and every CUDA toolkit.</summary>
    private static class Nvrtc
    {
        private static delegate* unmanaged<int*, int*, int> _version;
        private static delegate* unmanaged<int*, int> _getNumSupportedArchs;
        private static delegate* unmanaged<int*, int> _getSupportedArchs;
        private static delegate* unmanaged<nint*, byte*, byte*, int, byte**, byte**, int> _createProgram;
        private static delegate* unmanaged<nint, int, byte**, int> _compileProgram;
        private static delegate* unmanaged<nint, nuint*, int> _getProgramLogSize;
        private static delegate* unmanaged<nint, byte*, int> _getProgramLog;
        private static delegate* unmanaged<nint, nuint*, int> _getCubinSize;
        private static delegate* unmanaged<nint, byte*, int> _getCubin;
        private static delegate* unmanaged<nint, nuint*, int> _getPtxSize;
        private static delegate* unmanaged<nint, byte*, int> _getPtx;
        private static delegate* unmanaged<nint*, int> _destroyProgram;

        public static string Open(string? libTorchFolder)
        {
            foreach (string path in Candidates(libTorchFolder))
            {
                // libnvrtc opens its builtins library by name; loading it from the same folder first lets that succeed.
                string? folder = Path.GetDirectoryName(path);
                if (folder is not null && Directory.Exists(folder))
                    foreach (string builtins in Directory.EnumerateFiles(folder, "libnvrtc-builtins*.so*"))
                        NativeLibrary.TryLoad(builtins, out _);
                if (!NativeLibrary.TryLoad(path, out var library)) continue;
                if (!NativeLibrary.TryGetExport(library, "nvrtcCompileProgram", out _)) continue;
                Bind(library);
                return path;
            }
            throw new KernelException($"NVRTC (libnvrtc) was not found beside libtorch, in the CUDA toolkit or on the library path; set {NvrtcVariable} to its file");
        }

        /// <summary>FINETUNE_NVRTC; beside libtorch (torch/lib, ../nvidia/*/lib); CUDA_HOME/CUDA_PATH, /usr/local/cuda; the loader's path.</summary>
        private static IEnumerable<string> Candidates(string? libTorchFolder)
        {
            if (Environment.GetEnvironmentVariable(NvrtcVariable) is { Length: > 0 } named) yield return named;
            var folders = new List<string>();
            if (libTorchFolder is not null && Directory.Exists(libTorchFolder))
            {
                folders.Add(libTorchFolder);
                string nvidia = Path.GetFullPath(Path.Combine(libTorchFolder, "..", "..", "nvidia"));
                if (Directory.Exists(nvidia))
                    folders.AddRange(Directory.EnumerateDirectories(nvidia).Select(d => Path.Combine(d, "lib")).Where(Directory.Exists).OrderByDescending(d => d, StringComparer.Ordinal));
            }
            folders.Add(AppContext.BaseDirectory);
            folders.Add(Path.Combine(AppContext.BaseDirectory, "runtimes", "linux-x64", "native"));
            foreach (string variable in new[] { "CUDA_HOME", "CUDA_PATH" })
                if (Environment.GetEnvironmentVariable(variable) is { Length: > 0 } home) folders.Add(Path.Combine(home, "lib64"));
            folders.Add("/usr/local/cuda/lib64");
            foreach (string folder in folders.Where(Directory.Exists))
                foreach (string file in Directory.EnumerateFiles(folder, "libnvrtc*.so*").Where(f => !Path.GetFileName(f).Contains("builtins") && !Path.GetFileName(f).Contains("alt")).OrderByDescending(f => f, StringComparer.Ordinal))
                    yield return file;
            foreach (string name in new[] { "libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so" }) yield return name;
        }

        private static void Bind(nint library)
        {
            _version = (delegate* unmanaged<int*, int*, int>)Export(library, "nvrtcVersion");
            _getNumSupportedArchs = NativeLibrary.TryGetExport(library, "nvrtcGetNumSupportedArchs", out var n) ? (delegate* unmanaged<int*, int>)n : null;
            _getSupportedArchs = NativeLibrary.TryGetExport(library, "nvrtcGetSupportedArchs", out var s) ? (delegate* unmanaged<int*, int>)s : null;
            _createProgram = (delegate* unmanaged<nint*, byte*, byte*, int, byte**, byte**, int>)Export(library, "nvrtcCreateProgram");
            _compileProgram = (delegate* unmanaged<nint, int, byte**, int>)Export(library, "nvrtcCompileProgram");
            _getProgramLogSize = (delegate* unmanaged<nint, nuint*, int>)Export(library, "nvrtcGetProgramLogSize");
            _getProgramLog = (delegate* unmanaged<nint, byte*, int>)Export(library, "nvrtcGetProgramLog");
            _getCubinSize = (delegate* unmanaged<nint, nuint*, int>)Export(library, "nvrtcGetCUBINSize");
            _getCubin = (delegate* unmanaged<nint, byte*, int>)Export(library, "nvrtcGetCUBIN");
            _getPtxSize = (delegate* unmanaged<nint, nuint*, int>)Export(library, "nvrtcGetPTXSize");
            _getPtx = (delegate* unmanaged<nint, byte*, int>)Export(library, "nvrtcGetPTX");
            _destroyProgram = (delegate* unmanaged<nint*, int>)Export(library, "nvrtcDestroyProgram");
        }

        public static void Version(out int major, out int minor)
        {
            int a, b;
            if (_version(&a, &b) != 0) throw new KernelException("nvrtcVersion failed");
            (major, minor) = (a, b);
        }

        public static int[] SupportedArchitectures()
        {
            if (_getNumSupportedArchs == null || _getSupportedArchs == null) return [];
            int count;
            if (_getNumSupportedArchs(&count) != 0 || count <= 0) return [];
            var archs = new int[count];
            fixed (int* p = archs) if (_getSupportedArchs(p) != 0) return [];
            return archs;
        }

        /// <summary>The cubin (or PTX, with a NUL at the end as cuModuleLoadData wants it) of <paramref name="source"/>.</summary>
        public static byte[] Compile(string source, string[] options, bool cubin)
        {
            byte[] src = Encoding.UTF8.GetBytes(source + "\0");
            byte[] name = Encoding.ASCII.GetBytes("finetune_kernels.cu\0");
            byte[][] opts = [.. options.Select(o => Encoding.ASCII.GetBytes(o + "\0"))];
            nint program;
            fixed (byte* s = src, n = name)
                if (_createProgram(&program, s, n, 0, null, null) != 0) throw new KernelException("nvrtcCreateProgram failed");
            try
            {
                var handles = opts.Select(o => GCHandle.Alloc(o, GCHandleType.Pinned)).ToArray();
                int result;
                try
                {
                    byte** pointers = stackalloc byte*[opts.Length];
                    for (int i = 0; i < opts.Length; i++) pointers[i] = (byte*)handles[i].AddrOfPinnedObject();
                    result = _compileProgram(program, opts.Length, pointers);
                }
                finally
                {
                    foreach (var h in handles) h.Free();
                }
                if (result != 0) throw new KernelException($"NVRTC could not compile the kernels (error {result}): {Log(program)}");
                nuint size;
                if ((cubin ? _getCubinSize(program, &size) : _getPtxSize(program, &size)) != 0) throw new KernelException("NVRTC gave no output");
                var image = new byte[(int)size];
                fixed (byte* p = image)
                    if ((cubin ? _getCubin(program, p) : _getPtx(program, p)) != 0) throw new KernelException("NVRTC gave no output");
                return image;
            }
            finally
            {
                _destroyProgram(&program);
            }
        }

        private static string Log(nint program)
        {
            nuint size;
            if (_getProgramLogSize(program, &size) != 0 || size <= 1) return "(no log)";
            var log = new byte[(int)size];
            fixed (byte* p = log) _getProgramLog(program, p);
            string text = Encoding.UTF8.GetString(log, 0, log.Length - 1).Trim();
            return text.Length > 2000 ? text[..2000] : text;
        }
    }
}
