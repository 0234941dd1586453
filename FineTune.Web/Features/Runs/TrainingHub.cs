using FineTune.Engine.Training;
using Microsoft.AspNetCore.SignalR;

namespace FineTune.Web.Features.Runs;

/// <summary>Messages the hub sends to clients that joined a run's group.</summary>
public interface ITrainingClient
{
    Task Progress(ProgressMessage message);
    Task StatusChanged(StatusMessage message);
    Task QueuePosition(QueueMessage message);
}

/// <summary>The engine's progress record, unchanged, for one run.</summary>
public sealed record ProgressMessage(int RunId, TrainingProgress Progress);

public sealed record StatusMessage(int RunId, string Status, string? Error);

public sealed record QueueMessage(int RunId, int Position);

/// <summary>/hubs/training: live progress for one run per group. The wizard's pages get the same events in-process (RunNotifier).</summary>
public sealed class TrainingHub(RunQueue queue) : Hub<ITrainingClient>
{
    public const string Path = "/hubs/training";

    public static string Group(int runId) => $"run-{runId}";

    /// <summary>Joins a run's group and gets its latest progress and queue place at once (reattach after reload).</summary>
    public async Task JoinRun(int runId)
    {
        await Groups.AddToGroupAsync(Context.ConnectionId, Group(runId));
        if (queue.LatestProgress(runId) is { } progress)
            await Clients.Caller.Progress(new ProgressMessage(runId, progress));
        int position = queue.PositionOf(runId);
        if (position > 0)
            await Clients.Caller.QueuePosition(new QueueMessage(runId, position));
    }

    public Task LeaveRun(int runId) => Groups.RemoveFromGroupAsync(Context.ConnectionId, Group(runId));

}

/// <summary>Forwards RunNotifier events to the hub's groups.</summary>
internal sealed class TrainingHubForwarder(RunNotifier notifier, IHubContext<TrainingHub, ITrainingClient> hub) : IHostedService, IDisposable
{
    private IDisposable? _subscription;

    public Task StartAsync(CancellationToken cancellationToken)
    {
        _subscription = notifier.Subscribe(e =>
        {
            var group = hub.Clients.Group(TrainingHub.Group(e.RunId));
            return e switch
            {
                RunProgressEvent p => group.Progress(new ProgressMessage(e.RunId, p.Progress)),
                RunStatusEvent s => group.StatusChanged(new StatusMessage(e.RunId, s.Status.ToString().ToLowerInvariant(), s.Error)),
                RunQueueEvent q => group.QueuePosition(new QueueMessage(e.RunId, q.Position)),
                _ => Task.CompletedTask,
            };
        });
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken)
    {
        Dispose();
        return Task.CompletedTask;
    }

    public void Dispose() => _subscription?.Dispose();
}
