using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using ScalarType = TorchSharp.torch.ScalarType;

namespace FineTune.Engine.Backend;

/// <summary>Where the engine computes, and why it was chosen.</summary>
/// <param name="Kind">CPU or CUDA.</param>
/// <param name="Description">One line for people: "CUDA: NVIDIA H100 80GB HBM3, 79.1 GB" or "CPU: 16 threads".</param>
/// <param name="Reason">Why this backend: where libtorch came from, or why CUDA was not used.</param>
/// <param name="LibTorchSource">"nuget" (libtorch from the TorchSharp packages) or the folder of a PyTorch install.</param>
/// <param name="GpuName">The GPU's name when Kind is CUDA.</param>
/// <param name="GpuMemoryBytes">The GPU's total memory when Kind is CUDA.</param>
/// <remarks>
/// When libtorch cannot be loaded at all (<see cref="UnavailableReason"/> set), the app still starts: data and settings
/// can be prepared, but nothing may compute, so no TorchSharp call is made in this process.
/// </remarks>
public sealed record BackendInfo(
    DeviceType Kind,
    string Description,
    string Reason,
    string LibTorchSource,
    string? GpuName = null,
    long? GpuMemoryBytes = null)
{
    public bool IsCuda => Kind == DeviceType.CUDA;

    public torch.Device Device => IsCuda ? torch.CUDA : torch.CPU;

    /// <summary>What models compute in here: fp32 on the CPU; bf16 on CUDA, or fp16 where the GPU lacks bf16.</summary>
    public ScalarType ComputeDType => !IsCuda ? ScalarType.Float32 : SupportsBFloat16 ? ScalarType.BFloat16 : ScalarType.Float16;

    /// <summary>Every GPU of this machine, in CUDA's order (empty on the CPU backend): what a run may train on.</summary>
    public IReadOnlyList<GpuDevice> Gpus { get; init; } = [];

    /// <summary>All GPUs as devices: a data-parallel run on every GPU (<c>FineTuneJob.Devices</c>).</summary>
    public IReadOnlyList<torch.Device> GpuDevices => [.. Gpus.Select(g => g.Device)];

    /// <summary>True when the device computes bf16 natively (Ampere and newer); the T4 of the tutorial does not.</summary>
    public bool SupportsBFloat16 { get; init; }

    /// <summary>FineTune's own CUDA kernels (Kernels/CudaKernels.cs): "on: NVRTC 13.0 (...), sm_90, ..." or "off: why".</summary>
    public string Kernels { get; init; } = "off: not on a CUDA backend";

    /// <summary>Whether training steps are captured as CUDA graphs ("on: ..." or "off: why"; <see cref="FineTune.Engine.Kernels.CudaGraphs"/>).</summary>
    public string CudaGraphs { get; init; } = "off: not on a CUDA backend";

    /// <summary>Whether causal attention runs through libtorch's flash kernels ("on: ..." or "off: why"; <see cref="FineTune.Engine.Kernels.FlashAttention"/>).</summary>
    public string FlashAttention { get; init; } = "off: not on a CUDA backend";

    /// <summary>One line saying why libtorch could not be loaded and what to do instead; null when it loaded.</summary>
    public string? UnavailableReason { get; init; }

    /// <summary>False when libtorch could not be loaded: training, chat and merging are off.</summary>
    public bool CanCompute => UnavailableReason is null;

    /// <summary>Throws <see cref="ComputeUnavailableException"/> when nothing can compute here.</summary>
    public void EnsureCanCompute()
    {
        if (UnavailableReason is not null) throw new ComputeUnavailableException(UnavailableReason);
    }
}

/// <summary>One GPU of the machine.</summary>
/// <param name="Index">CUDA's ordinal (cuda:Index).</param>
/// <param name="Name">The card's name, e.g. "NVIDIA H200".</param>
/// <param name="MemoryBytes">Its total memory.</param>
public sealed record GpuDevice(int Index, string Name, long MemoryBytes)
{
    public torch.Device Device => new(DeviceType.CUDA, Index);
}

/// <summary>libtorch could not be loaded in this process; the message is the one line for the user.</summary>
public sealed class ComputeUnavailableException(string message) : InvalidOperationException(message);

/// <summary>
/// The one place that decides the compute backend. It must run before any other TorchSharp call:
/// libtorch can only be loaded once per process.
/// Order: FINETUNE_LIBTORCH (a folder with libtorch*.so) → the libtorch of python3's torch →
/// TorchSharp's own packaged natives (CUDA package if present, else CPU).
/// </summary>
public static class ComputeBackend
{
    public const string LibTorchVariable = "FINETUNE_LIBTORCH";
    public const string ForceCpuVariable = "FINETUNE_DEVICE";
    private const string AllocatorConfigVariable = "PYTORCH_CUDA_ALLOC_CONF";

    private static readonly Lock Gate = new();
    private static BackendInfo? _current;

    /// <summary>The backend chosen at start-up; chooses it on first use.</summary>
    public static BackendInfo Current => _current ?? Initialize();

    public static BackendInfo Initialize(ILogger? logger = null)
    {
        lock (Gate)
        {
            if (_current is not null) return _current;
            logger ??= NullLogger.Instance;
            _current = NativeRuntimeCheck.Problem() is { } problem ? Unavailable(problem) : ChooseOrReportLoadFailure(logger);
            if (_current.UnavailableReason is { } reason)
                logger.LogError("{Reason}", reason);
            else
                logger.LogInformation("Compute backend: {Description} ({Reason}); kernels {Kernels}; CUDA graphs {CudaGraphs}; flash attention {FlashAttention}", _current.Description, _current.Reason, _current.Kernels, _current.CudaGraphs, _current.FlashAttention);
            return _current;
        }
    }

    /// <summary>A backend that cannot compute: the app runs for data and settings only.</summary>
    private static BackendInfo Unavailable(string reason) =>
        new(DeviceType.CPU, "No compute backend", reason, "none") { UnavailableReason = reason };

    private static BackendInfo ChooseOrReportLoadFailure(ILogger logger)
    {
        try
        {
            return Choose(logger);
        }
        catch (Exception e) when (NativeRuntimeCheck.IsNativeLoadFailure(e))
        {
            // TorchSharp's own message is a page of loader trace; keep its first line for the log and say what to do.
            logger.LogDebug(e, "libtorch could not be loaded");
            return Unavailable(NativeRuntimeCheck.LoadFailureLine(e));
        }
    }

    private static BackendInfo Choose(ILogger logger)
    {
        // Variable-length batches fragment PyTorch's CUDA cache; expandable segments keep the peak near what is
        // allocated. Read by libtorch from the C environment (not .NET's copy) when its allocator starts; a user's
        // own PYTORCH_CUDA_ALLOC_CONF wins.
        if (OperatingSystem.IsLinux() && Environment.GetEnvironmentVariable(AllocatorConfigVariable) is null)
        {
            NativeEnvironment.Set(AllocatorConfigVariable, "expandable_segments:True");
            Environment.SetEnvironmentVariable(AllocatorConfigVariable, "expandable_segments:True");
        }

        // Before libtorch (and the NCCL it links) reads its environment.
        Distributed.MulticastSafety.Apply();

        bool cpuForced = string.Equals(Environment.GetEnvironmentVariable(ForceCpuVariable), "cpu", StringComparison.OrdinalIgnoreCase);

        // 1. An existing PyTorch install, named or found through python3.
        string? folder = Environment.GetEnvironmentVariable(LibTorchVariable);
        string source = LibTorchVariable;
        if (string.IsNullOrWhiteSpace(folder) && !cpuForced && !HasPackagedLibTorch())
        {
            folder = FindPythonTorchLibFolder();
            source = "python3 torch";
        }

        if (!string.IsNullOrWhiteSpace(folder))
        {
            if (!Directory.Exists(folder))
                throw new DirectoryNotFoundException(
                    $"{LibTorchVariable}='{folder}' is not a folder. Point it at PyTorch's lib folder (the one with libtorch_cpu.so), or unset it to use the packaged libtorch.");
            bool cuda = LoadPyTorchLibraries(folder, logger) && !cpuForced;
            if (cuda) return CudaInfo($"libtorch from {source} ({folder})", folder);
            torch.InitializeDeviceType(DeviceType.CPU);
            return CpuInfo(cpuForced ? $"{ForceCpuVariable}=cpu" : $"no CUDA libtorch in {folder}", folder);
        }

        // 2. TorchSharp's own natives (libtorch-cpu by default; TorchSharp-cuda-linux with TorchBackend=cuda).
        if (!cpuForced && torch.cuda.is_available())
        {
            torch.InitializeDeviceType(DeviceType.CUDA);
            return CudaInfo("libtorch from the TorchSharp CUDA packages", "nuget");
        }
        torch.InitializeDeviceType(DeviceType.CPU);
        return CpuInfo(cpuForced ? $"{ForceCpuVariable}=cpu" : "no CUDA libtorch found", "nuget");
    }

    private static BackendInfo CpuInfo(string reason, string libTorchSource) =>
        new(DeviceType.CPU, $"CPU: {Environment.ProcessorCount} threads", reason, libTorchSource) { SupportsBFloat16 = true };

    private static BackendInfo CudaInfo(string reason, string libTorchSource)
    {
        torch.InitializeDeviceType(DeviceType.CUDA);
        if (!torch.cuda.is_available())
            return CpuInfo($"{reason}, but no CUDA device is visible", libTorchSource);
        // cuDNN's attention builds a new execution plan for every sequence length it meets (150-600 ms each on an
        // H200, measured with tools/bench: 1.25 ms per call once built); variable-length training batches meet a new
        // length almost every step. PyTorch's flash and memory-efficient kernels need no plan and were faster there.
        if (!AttentionKernels.TryDisableCudnnAttention())
            reason += "; cuDNN attention could not be switched off";
        var (name, totalBytes, major) = CudaDriver.DescribeDevice(0);
        string description = name is null
            ? "CUDA: GPU 0"
            : $"CUDA: {name}, {totalBytes / 1e9:0.#} GB";
        int count = torch.cuda.device_count();
        var gpus = Enumerable.Range(0, count).Select(i =>
        {
            var (gpuName, gpuBytes, _) = CudaDriver.DescribeDevice(i);
            return new GpuDevice(i, gpuName ?? $"GPU {i}", gpuBytes);
        }).ToList();
        if (count > 1) description += $" (× {count} GPUs)";
        return new BackendInfo(DeviceType.CUDA, description, reason, libTorchSource, name, totalBytes)
        {
            SupportsBFloat16 = major is null or >= 8,
            Gpus = gpus,
            Kernels = Kernels.CudaKernels.Start(Directory.Exists(libTorchSource) ? libTorchSource : null),
            CudaGraphs = Kernels.CudaGraphs.Start(Directory.Exists(libTorchSource) ? libTorchSource : null),
            FlashAttention = Kernels.FlashAttention.Start(),
        };
    }

    /// <summary>True when TorchSharp's packaged natives (libtorch-cpu or -cuda) sit beside the app.</summary>
    private static bool HasPackagedLibTorch()
    {
        string appFolder = AppContext.BaseDirectory;
        string[] candidates =
        [
            Path.Combine(appFolder, "libtorch_cpu.so"),
            Path.Combine(appFolder, "runtimes", "linux-x64", "native", "libtorch_cpu.so"),
            Path.Combine(appFolder, "torch_cpu.dll"),
            Path.Combine(appFolder, "runtimes", "win-x64", "native", "torch_cpu.dll"),
            Path.Combine(appFolder, "libtorch_cpu.dylib"),
            Path.Combine(appFolder, "runtimes", "osx-arm64", "native", "libtorch_cpu.dylib"),
        ];
        return candidates.Any(File.Exists);
    }

    /// <summary>Loads a PyTorch install's libraries in the order that works with TorchSharp; true when the CUDA ones loaded.</summary>
    private static bool LoadPyTorchLibraries(string folder, ILogger logger)
    {
        NativeLibrary.Load(Path.Combine(folder, "libc10.so"));
        NativeLibrary.Load(Path.Combine(folder, "libtorch_cpu.so"));
        bool cuda = File.Exists(Path.Combine(folder, "libtorch_cuda.so"));
        if (cuda)
        {
            NativeLibrary.Load(Path.Combine(folder, "libc10_cuda.so"));
            NativeLibrary.Load(Path.Combine(folder, "libtorch_cuda.so"));
        }
        NativeLibrary.Load(Path.Combine(folder, "libtorch.so"));

        string? torchSharpNative = FindLibTorchSharp();
        if (torchSharpNative is null)
            throw new FileNotFoundException(
                "libLibTorchSharp.so was not found beside the app. Publish with -r linux-x64 so TorchSharp's own native library is included.");
        NativeLibrary.Load(torchSharpNative);
        logger.LogDebug("Loaded PyTorch libtorch from {Folder} and {LibTorchSharp}", folder, torchSharpNative);
        return cuda;
    }

    private static string? FindLibTorchSharp()
    {
        string appFolder = AppContext.BaseDirectory;
        string[] candidates =
        [
            Path.Combine(appFolder, "libLibTorchSharp.so"),
            Path.Combine(appFolder, "runtimes", "linux-x64", "native", "libLibTorchSharp.so"),
            Path.Combine(Path.GetDirectoryName(typeof(torch).Assembly.Location) ?? appFolder, "libLibTorchSharp.so"),
        ];
        return candidates.FirstOrDefault(File.Exists);
    }

    /// <summary>The lib folder of python3's torch, when python3 and a CUDA build of torch are installed.</summary>
    private static string? FindPythonTorchLibFolder()
    {
        try
        {
            var start = new ProcessStartInfo("python3", ["-c", "import os, torch; print(os.path.join(os.path.dirname(torch.__file__), 'lib'))"])
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            using var process = Process.Start(start);
            if (process is null) return null;
            string output = process.StandardOutput.ReadToEnd().Trim();
            if (!process.WaitForExit(20_000) || process.ExitCode != 0) return null;
            return File.Exists(Path.Combine(output, "libtorch_cuda.so")) ? output : null;
        }
        catch (System.ComponentModel.Win32Exception)
        {
            return null; // no python3 on PATH
        }
    }
}

/// <summary>
/// Which kernels scaled_dot_product_attention may use. TorchSharp 0.107 exposes the flash and math switches only;
/// the cuDNN one is libtorch's at::globalContext().setSDPUseCuDNN(bool), reached by its exported C++ symbol.
/// </summary>
internal static class AttentionKernels
{
    private const string GlobalContextSymbol = "_ZN2at13globalContextEv";        // at::globalContext()
    private const string SetUseCudnnSymbol = "_ZN2at7Context14setSDPUseCuDNNEb"; // at::Context::setSDPUseCuDNN(bool)
    private const string UserEnabledCudnnSymbol = "_ZNK2at7Context19userEnabledCuDNNSDPEv"; // at::Context::userEnabledCuDNNSDP() const

    /// <summary>Switches cuDNN attention off; false when this libtorch does not export the switch (nothing changes then).</summary>
    public static unsafe bool TryDisableCudnnAttention()
    {
        nint globalContext = Kernels.LibTorchOps.Find(GlobalContextSymbol), setUseCudnn = Kernels.LibTorchOps.Find(SetUseCudnnSymbol),
            userEnabled = Kernels.LibTorchOps.Find(UserEnabledCudnnSymbol);
        if (globalContext == 0 || setUseCudnn == 0 || userEnabled == 0) return false;
        // A member function takes `this` as its first argument (Itanium C++ ABI).
        nint context = ((delegate* unmanaged<nint>)globalContext)();
        ((delegate* unmanaged<nint, byte, void>)setUseCudnn)(context, 0);
        return ((delegate* unmanaged<nint, byte>)userEnabled)(context) == 0;
    }
}

/// <summary>setenv(3): .NET's Environment.SetEnvironmentVariable does not reach native getenv on Unix.</summary>
internal static partial class NativeEnvironment
{
    [LibraryImport("libc", EntryPoint = "setenv", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int SetEnv(string name, string value, int overwrite);

    /// <summary>Sets the variable unless it is set already (<paramref name="overwrite"/>: always).</summary>
    public static void Set(string name, string value, bool overwrite = false) => SetEnv(name, value, overwrite ? 1 : 0);
}

/// <summary>The few CUDA driver calls needed to name the GPU, its memory and its PCI address (libcuda ships with every NVIDIA driver).</summary>
internal static partial class CudaDriver
{
    private const string Library = "libcuda.so.1";

    [LibraryImport(Library)] private static partial int cuInit(uint flags);
    [LibraryImport(Library)] private static partial int cuDeviceGet(out int device, int ordinal);
    [LibraryImport(Library)] private static unsafe partial int cuDeviceGetName(byte* name, int length, int device);
    [LibraryImport(Library, EntryPoint = "cuDeviceTotalMem_v2")] private static partial int cuDeviceTotalMem(out nuint bytes, int device);
    [LibraryImport(Library)] private static partial int cuDeviceGetAttribute(out int value, int attribute, int device);
    [LibraryImport(Library)] private static partial int cuDeviceGetCount(out int count);
    [LibraryImport(Library)] private static unsafe partial int cuDeviceGetPCIBusId(byte* pciBusId, int length, int device);

    private const int ComputeCapabilityMajor = 75; // CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR

    public static unsafe (string? Name, long TotalBytes, int? Major) DescribeDevice(int ordinal)
    {
        try
        {
            if (cuInit(0) != 0 || cuDeviceGet(out int device, ordinal) != 0) return (null, 0, null);
            byte* buffer = stackalloc byte[256];
            string? name = cuDeviceGetName(buffer, 256, device) == 0 ? Marshal.PtrToStringUTF8((nint)buffer) : null;
            long total = cuDeviceTotalMem(out nuint bytes, device) == 0 ? (long)bytes : 0;
            int? major = cuDeviceGetAttribute(out int value, ComputeCapabilityMajor, device) == 0 ? value : null;
            return (name, total, major);
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return (null, 0, null);
        }
    }

    /// <summary>How many GPUs CUDA sees (its ordinals are 0..count-1): those CUDA_VISIBLE_DEVICES leaves; 0 without a driver.</summary>
    public static int DeviceCount()
    {
        try
        {
            return cuInit(0) == 0 && cuDeviceGetCount(out int count) == 0 ? count : 0;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return 0;
        }
    }

    /// <summary>The PCI bus id ("0000:3B:00.0") of CUDA's GPU <paramref name="ordinal"/>, the name NVML knows the same card by; null where the driver cannot say.</summary>
    public static unsafe string? PciBusId(int ordinal)
    {
        try
        {
            if (cuInit(0) != 0 || cuDeviceGet(out int device, ordinal) != 0) return null;
            byte* buffer = stackalloc byte[32];
            return cuDeviceGetPCIBusId(buffer, 32, device) == 0 ? Marshal.PtrToStringUTF8((nint)buffer) : null;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return null;
        }
    }
}
