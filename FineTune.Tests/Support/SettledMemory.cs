using FineTune.Engine.Backend;

namespace FineTune.Tests.Support;

/// <summary>
/// Resident memory read once the .NET side has settled: a collection, its finalizers run to the end (they free native
/// tensors; left running, they freed memory while a test measured), and a second collection for what they released.
/// </summary>
public static class SettledMemory
{
    public static void Settle()
    {
        GC.Collect();
        GC.WaitForPendingFinalizers();
        GC.Collect();
    }

    public static long ResidentBytes()
    {
        Settle();
        return HostMemory.ResidentBytes();
    }
}
