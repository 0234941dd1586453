using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;

namespace FineTune.Tests.Support;

/// <summary>
/// glibc's mmap threshold fixed at its starting value (128 KiB) for the test process, as MALLOC_MMAP_THRESHOLD_=131072
/// would: every block that large is mapped on its own and goes back to the system when freed. Left dynamic, glibc raises
/// the threshold (up to 32 MiB) each time a larger mapped block is freed, and from then on keeps such blocks in its heap:
/// whole-process resident-memory tests then read what earlier tests in the process happened to allocate (in this
/// session's CI runs a failed load was seen to keep 34 MB and to grow 148 MB for its ~190 MB of weights, and a fused
/// function's backward read 12 MiB below its baseline, each in one run and not in the next).
/// </summary>
internal static partial class NativeHeapSettings
{
    private const int MmapThreshold = -3; // M_MMAP_THRESHOLD (malloc.h); setting it turns the dynamic threshold off

    [ModuleInitializer]
    internal static void FixMmapThreshold()
    {
        if (!OperatingSystem.IsLinux()) return;
        try
        {
            Mallopt(MmapThreshold, 128 * 1024);
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
            // Not glibc: nothing to fix.
        }
    }

    [LibraryImport("libc", EntryPoint = "mallopt")]
    private static partial int Mallopt(int parameter, int value);
}
