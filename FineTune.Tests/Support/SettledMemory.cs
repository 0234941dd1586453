using FineTune.Engine.Backend;

namespace FineTune.Tests.Support;

/// <summary>
/// Resident memory read once the .NET side has settled: a collection, its finalizers run to the end (they free native
/// tensors; left running, they freed memory while a test measured), and a second, aggressive collection for what they
/// released, which also gives the GC's free memory back to the system at once: the GC otherwise decommits freed regions
/// over time, so a baseline read after large managed arrays (earlier tests' results) fell by itself while a test measured
/// (CI at 83046ed: "after backward" 12.1 MiB below the baseline in FusedOpsSavedMemoryTests, and a failed load seen to
/// hold 148 MB above a start where its ~190 MB of weights were loaded).
/// </summary>
public static class SettledMemory
{
    public static void Settle()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
    }

    public static long ResidentBytes()
    {
        Settle();
        return HostMemory.ResidentBytes();
    }
}
