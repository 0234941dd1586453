using System.Runtime;
using FineTune.Engine.Backend;
using FineTune.Web.Features.Wizard;
using Microsoft.AspNetCore.Components.Server.Circuits;

namespace FineTune.Web.Infrastructure;

/// <summary>
/// Gives the memory of a closed tab back to the operating system. A circuit holding an uploaded file (its bytes, the
/// parsed table and the rows: several times the file's size) is unreachable once it ends, but an idle app allocates
/// nothing more, so no collection runs and the GC keeps the pages; seen: a 45 MB CSV left the app at 900 MB after its tab
/// closed. When such a circuit closes, <see cref="MemoryReclaimer"/> runs a compacting collection that also decommits
/// (<see cref="GCCollectionMode.Aggressive"/>) a moment later, and again until the upload is found unreachable.
/// </summary>
public static class MemoryReclaim
{
    public static IServiceCollection AddMemoryReclaim(this IServiceCollection services)
    {
        services.AddSingleton<MemoryReclaimer>();
        services.AddScoped<CircuitHandler, ReleaseUploadOnCircuitClose>();
        return services;
    }
}

/// <summary>
/// Aggressive, compacting collections a moment after a request (several closing tabs share them), repeated with growing
/// pauses while what the request named is still reachable: a closed circuit is let go only once its connection is cleaned
/// up too (seen: collections up to 30 s after the close still found the upload live; the one at about a minute freed it all).
/// </summary>
public sealed class MemoryReclaimer(ILogger<MemoryReclaimer> logger) : IDisposable
{
    /// <summary>The pause before the first collection; each further one waits twice as long.</summary>
    public static readonly TimeSpan FirstDelay = TimeSpan.FromSeconds(2);

    /// <summary>
    /// Collections per request at most (2 + 4 + … + 64 s: about two minutes). Seen: a closed tab's upload stayed reachable
    /// for 30 to 60 s after its circuit closed (its connection is let go later), and was freed by the fifth collection.
    /// </summary>
    public const int MaxAttempts = 6;

    private readonly Lock _gate = new();
    private readonly List<WeakReference> _released = [];
    private Timer? _timer;
    private string _reason = "";
    private int _attempt;

    /// <summary>Asks for collections until <paramref name="released"/> (the closed circuit's upload) is gone, or <see cref="MaxAttempts"/>.</summary>
    public void Request(string reason, object? released = null)
    {
        lock (_gate)
        {
            if (released is not null) _released.Add(new WeakReference(released));
            (_reason, _attempt) = (reason, 0);
            // Created without the caller's execution context: a timer keeps what it captured (the first closing circuit's
            // async-locals) for the app's lifetime, and with them that circuit's upload.
            if (_timer is null)
                using (ExecutionContext.SuppressFlow())
                    _timer = new Timer(_ => Collect(), null, Timeout.Infinite, Timeout.Infinite);
            _timer.Change(FirstDelay, Timeout.InfiniteTimeSpan);
        }
    }

    public void Dispose()
    {
        lock (_gate) _timer?.Dispose();
    }

    private void Collect()
    {
        long before = GC.GetTotalMemory(forceFullCollection: false);
        GCSettings.LargeObjectHeapCompactionMode = GCLargeObjectHeapCompactionMode.CompactOnce;
        GC.Collect(GC.MaxGeneration, GCCollectionMode.Aggressive, blocking: true, compacting: true);
        HostMemory.TrimNativeHeap();
        var info = GC.GetGCMemoryInfo();
        string reason;
        int attempt, waiting;
        lock (_gate)
        {
            _released.RemoveAll(r => !r.IsAlive);
            (reason, attempt, waiting) = (_reason, ++_attempt, _released.Count);
            if (waiting > 0 && attempt < MaxAttempts)
                _timer?.Change(FirstDelay * (1 << attempt), Timeout.InfiniteTimeSpan);
            else
                _released.Clear();
        }
        logger.LogInformation("Memory reclaimed ({Reason}, collection {Attempt}): managed heap {Before:0} → {After:0} MB, {Committed:0} MB committed{Waiting}",
            reason, attempt, before / 1048576.0, info.HeapSizeBytes / 1048576.0, info.TotalCommittedBytes / 1048576.0,
            waiting > 0 ? "; the released data is still reachable" : "");
    }
}

/// <summary>
/// Asks for the memory back when a circuit that held an upload closes. The state itself is left alone (the draft store may
/// still be writing it); it becomes unreachable with the circuit.
/// </summary>
internal sealed class ReleaseUploadOnCircuitClose(WizardState state, MemoryReclaimer reclaimer) : CircuitHandler
{
    public override Task OnCircuitClosedAsync(Circuit circuit, CancellationToken cancellationToken)
    {
        if (state.File is { } file) reclaimer.Request($"circuit {circuit.Id} closed with an upload", file);
        return Task.CompletedTask;
    }
}
