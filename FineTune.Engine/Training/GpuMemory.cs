using System.Runtime.InteropServices;

namespace FineTune.Engine.Training;

/// <summary>GPU memory in use, read through NVML (shipped with every NVIDIA driver); null where there is none.</summary>
internal static partial class GpuMemory
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
    [LibraryImport(Library, EntryPoint = "nvmlDeviceGetHandleByIndex_v2")] private static partial int NvmlDeviceGetHandleByIndex(uint index, out nint device);
    [LibraryImport(Library, EntryPoint = "nvmlDeviceGetMemoryInfo")] private static partial int NvmlDeviceGetMemoryInfo(nint device, out NvmlMemory memory);

    private static bool? _available;
    private static nint _device;

    public static long? UsedBytes()
    {
        try
        {
            if (_available is null)
            {
                _available = NvmlInit() == 0 && NvmlDeviceGetHandleByIndex(0, out _device) == 0;
            }
            if (_available != true) return null;
            return NvmlDeviceGetMemoryInfo(_device, out var memory) == 0 ? (long)memory.Used : null;
        }
        catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException)
        {
            _available = false;
            return null;
        }
    }
}
