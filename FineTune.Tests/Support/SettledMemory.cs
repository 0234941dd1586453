using System.Runtime.InteropServices;
using FineTune.Engine.Backend;

namespace FineTune.Tests.Support;

/// <summary>
/// Resident memory read once the process has settled: a collection, its finalizers run to the end (they free native
/// tensors; left running, they freed memory while a test measured), a second collection for what they released, and on
/// Linux glibc's free memory handed back to the system (malloc_trim). Without the trim, glibc keeps freed heap memory
/// resident until a later free happens to trim it: after freeing a large mmapped block it raises its mmap threshold, so
/// the next tensors of that size come from the heap, and a reading taken after such a trim came out 15 MiB below a
/// baseline that still held untrimmed memory (CI at 3cacb4e, FusedOpsSavedMemoryTests).
/// </summary>
public static class SettledMemory
{
    public static void Settle()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
        if (OperatingSystem.IsLinux())
        {
            try { MallocTrim(0); }
            catch (Exception e) when (e is DllNotFoundException or EntryPointNotFoundException) { } // not glibc (musl): nothing kept to trim
        }
    }

    public static long ResidentBytes()
    {
        Settle();
        return HostMemory.ResidentBytes();
    }

    [DllImport("libc.so.6", EntryPoint = "malloc_trim")]
    private static extern int MallocTrim(nuint pad);
}
