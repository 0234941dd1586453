using System.Runtime.InteropServices;
using FineTune.Engine.Kernels;
using TorchSharp;

namespace FineTune.Engine.Backend;

/// <summary>
/// GPU memory in use (all processes, as nvidia-smi shows it) on the GPU a run computes on, read through NVML (shipped
/// with every NVIDIA driver); null on the CPU or where the driver cannot say.
/// </summary>
internal static class GpuMemory
{
    private static readonly Lazy<GpuMemoryReader> Reader = new(() => new GpuMemoryReader(new DriverGpuQueries()));

    /// <summary>The memory in use on <paramref name="device"/>'s GPU (an index-less "cuda" is GPU 0); null for other devices.</summary>
    public static long? UsedBytes(torch.Device device) => CudaKernels.Ordinal(device) is null ? null : Reader.Value.UsedBytes(device);
}

/// <summary>
/// Finds a CUDA device's card in NVML and reads its memory. CUDA and NVML number the GPUs differently: CUDA counts
/// the ones CUDA_VISIBLE_DEVICES leaves, in CUDA_DEVICE_ORDER; NVML counts every GPU of the machine in PCI order. So
/// cuda:1 is looked up by its PCI bus id, the one name both know the card by, once per GPU; its memory is read at every call.
/// </summary>
internal sealed class GpuMemoryReader(IGpuQueries queries)
{
    private sealed record NvmlDevice(nint Handle);

    private readonly PerDevice<NvmlDevice> _devices = new(queries.CudaDeviceCount(), ordinal =>
        queries.PciBusId(ordinal) is not { } busId ? (null, $"GPU {ordinal}: the CUDA driver gave no PCI bus id")
        : queries.NvmlDevice(busId) is { } handle ? (new NvmlDevice(handle), null)
        : (null, $"GPU {ordinal}: NVML has no device at {busId}"));

    /// <summary>The memory in use on <paramref name="device"/>'s GPU; null for other devices and where NVML cannot say.</summary>
    public long? UsedBytes(torch.Device device) =>
        CudaKernels.Ordinal(device) is int ordinal && _devices.Get(ordinal) is { } nvml ? queries.UsedBytes(nvml.Handle) : null;
}

/// <summary>The driver calls <see cref="GpuMemoryReader"/> makes; a fake stands in for them in tests.</summary>
internal interface IGpuQueries
{
    /// <summary>How many GPUs CUDA sees: its ordinals are 0..count-1.</summary>
    int CudaDeviceCount();

    /// <summary>The PCI bus id of CUDA's GPU <paramref name="cudaOrdinal"/> ("0000:3B:00.0"), or null.</summary>
    string? PciBusId(int cudaOrdinal);

    /// <summary>NVML's handle of the GPU at <paramref name="pciBusId"/>, or null (no NVML, or no such GPU).</summary>
    nint? NvmlDevice(string pciBusId);

    /// <summary>The bytes in use on that GPU now, or null.</summary>
    long? UsedBytes(nint nvmlDevice);
}

/// <summary>libcuda (through <see cref="CudaDriver"/>) and libnvidia-ml.</summary>
internal sealed partial class DriverGpuQueries : IGpuQueries
{
    private const string Library = "libnvidia-ml.so.1";

    [StructLayout(LayoutKind.Sequential)]
    private struct NvmlMemory
    {
        public ulong Total;
        public ulong Free;
        public ulong Used;
    }

    [LibraryImport(Library, EntryPoint = "nvmlInit_v2")] private static partial int NvmlInit();
    [LibraryImport(Library, EntryPoint = "nvmlDeviceGetHandleByPciBusId_v2", StringMarshalling = StringMarshalling.Utf8)]
    private static partial int NvmlDeviceGetHandleByPciBusId(string pciBusId, out nint device);
    [LibraryImport(Library, EntryPoint = "nvmlDeviceGetMemoryInfo")] private static partial int NvmlDeviceGetMemoryInfo(nint device, out NvmlMemory memory);
    private readonly Lazy<bool> _nvmlStarted = new(() => Nvml(NvmlInit) == 0);

    public int CudaDeviceCount() => CudaDriver.DeviceCount();

    public string? PciBusId(int cudaOrdinal) => CudaDriver.PciBusId(cudaOrdinal);

    public nint? NvmlDevice(string pciBusId)
    {
        nint handle = 0;
        return _nvmlStarted.Value && Nvml(() => NvmlDeviceGetHandleByPciBusId(pciBusId, out handle)) == 0 ? handle : null;
    }

    public long? UsedBytes(nint nvmlDevice)
    {
        NvmlMemory memory = default;
        return Nvml(() => NvmlDeviceGetMemoryInfo(nvmlDevice, out memory)) == 0 ? (long)memory.Used : null;
    }

    /// <summary>An NVML call's return code; -1 where the library or the entry point is missing (no NVIDIA driver).</summary>
    private static int Nvml(Func<int> call)
    {
        try
        {
            return call();
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            return -1;
        }
    }
}
