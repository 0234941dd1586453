using System.Diagnostics;
using System.Runtime;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace FineTune.Web.Infrastructure;

/// <summary>
/// The app's memory as the operating system and the GC see it, under /healthz "checks.memory": resident bytes, the managed
/// heap (live objects at the last collection, and what the GC holds committed for it) and the GC's mode. Always healthy:
/// it is there to be read (is memory given back after an upload's tab closed, or after a failed model load?).
/// </summary>
internal sealed class ProcessMemoryCheck : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        using var process = Process.GetCurrentProcess();
        var gc = GC.GetGCMemoryInfo();
        const double MiB = 1 << 20;
        var data = new Dictionary<string, object>
        {
            ["residentBytes"] = process.WorkingSet64,
            ["gcHeapBytes"] = gc.HeapSizeBytes,
            ["gcCommittedBytes"] = gc.TotalCommittedBytes,
            ["gcFragmentedBytes"] = gc.FragmentedBytes,
            ["gcAllocatedBytes"] = GC.GetTotalMemory(forceFullCollection: false),
            ["gcMode"] = GCSettings.IsServerGC ? "server" : "workstation",
        };
        return Task.FromResult(HealthCheckResult.Healthy(
            $"resident {process.WorkingSet64 / MiB:0} MB; GC heap {gc.HeapSizeBytes / MiB:0} MB, committed {gc.TotalCommittedBytes / MiB:0} MB, " +
            $"fragmented {gc.FragmentedBytes / MiB:0} MB ({data["gcMode"]})", data));
    }
}
