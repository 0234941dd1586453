using FineTune.Engine.Training;

namespace FineTune.Web.Features.Runs;

/// <summary>Something that happened to a run, for live pages and the hub.</summary>
public abstract record RunEvent(int RunId);
public sealed record RunProgressEvent(int RunId, TrainingProgress Progress) : RunEvent(RunId);
public sealed record RunStatusEvent(int RunId, RunStatus Status, string? Error) : RunEvent(RunId);
/// <summary>A waiting run's place: 1 = next. 0 = no longer waiting.</summary>
public sealed record RunQueueEvent(int RunId, int Position) : RunEvent(RunId);

/// <summary>
/// In-process fan-out of run events. Subscribers get an IDisposable; dispose it (component Dispose) to stop.
/// A failing subscriber is logged and does not affect the others or the training.
/// </summary>
public sealed class RunNotifier(ILogger<RunNotifier> logger)
{
    private readonly Lock _gate = new();
    private ImmutableHandlers _handlers = new([]);

    public IDisposable Subscribe(Func<RunEvent, Task> handler)
    {
        lock (_gate) _handlers = new([.. _handlers.Items, handler]);
        return new Subscription(this, handler);
    }

    public async Task PublishAsync(RunEvent runEvent)
    {
        foreach (var handler in _handlers.Items)
        {
            try
            {
                await handler(runEvent);
            }
            catch (Exception e)
            {
                logger.LogWarning(e, "A run-event subscriber failed on {Event}", runEvent);
            }
        }
    }

    private void Unsubscribe(Func<RunEvent, Task> handler)
    {
        lock (_gate) _handlers = new(_handlers.Items.Where(h => h != handler).ToArray());
    }

    internal int SubscriberCount => _handlers.Items.Length;

    private sealed record ImmutableHandlers(Func<RunEvent, Task>[] Items);

    private sealed class Subscription(RunNotifier owner, Func<RunEvent, Task> handler) : IDisposable
    {
        private int _disposed;
        public void Dispose()
        {
            if (Interlocked.Exchange(ref _disposed, 1) == 0) owner.Unsubscribe(handler);
        }
    }
}
