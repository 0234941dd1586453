using FineTune.Engine.Training;
using System.Collections.Concurrent;
using System.Threading.Channels;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.Runs;

/// <summary>
/// Trains one run at a time (one GPU), in the order runs were queued. Fed by a channel; keeps the waiting
/// list for queue positions and the latest progress of each run for pages that reattach after a reload.
/// </summary>
public sealed class RunQueue(RunStore store, RunNotifier notifier, ITrainingRunner runner, ILogger<RunQueue> logger) : BackgroundService
{
    private readonly Channel<int> _channel = Channel.CreateUnbounded<int>(new UnboundedChannelOptions { SingleReader = true });
    private readonly Lock _gate = new();
    private readonly List<int> _waiting = [];
    private readonly ConcurrentDictionary<int, TrainingProgress> _latest = new();
    private readonly HashSet<int> _resume = [];
    private (int RunId, CancellationTokenSource Cancel)? _current;

    /// <summary>The run training now, if any.</summary>
    public int? CurrentRunId { get { lock (_gate) return _current?.RunId; } }

    /// <summary>1 = next to train; 0 = not waiting (training, finished or unknown).</summary>
    public int PositionOf(int runId)
    {
        lock (_gate) return _waiting.IndexOf(runId) + 1;
    }

    public TrainingProgress? LatestProgress(int runId) => _latest.TryGetValue(runId, out var p) ? p : null;

    /// <summary>Queues a run already stored as 'queued' (or re-queues an interrupted/failed one: pass resume to continue from its checkpoint).</summary>
    public async Task EnqueueAsync(int runId, bool resume = false)
    {
        var run = await store.GetAsync(runId) ?? throw new KeyNotFoundException($"Run {runId} does not exist.");
        if (run.Status == RunStatus.Training || PositionOf(runId) > 0)
            throw new InvalidOperationException($"Run {runId} is already {(run.Status == RunStatus.Training ? "training" : "queued")}.");
        if (run.Status != RunStatus.Queued)
            await store.SetStatusAsync(runId, RunStatus.Queued);
        lock (_gate)
        {
            _waiting.Add(runId);
            if (resume) _resume.Add(runId);
        }
        await notifier.PublishAsync(new RunStatusEvent(runId, RunStatus.Queued, null));
        await PublishPositionsAsync();
        await _channel.Writer.WriteAsync(runId);
    }

    /// <summary>Cancels a waiting run at once, or asks the training one to stop (it ends as 'cancelled').</summary>
    public async Task<bool> CancelAsync(int runId)
    {
        bool wasWaiting;
        lock (_gate)
        {
            wasWaiting = _waiting.Remove(runId);
            if (!wasWaiting && _current is { } current && current.RunId == runId)
            {
                current.Cancel.Cancel();
                return true;
            }
        }
        if (!wasWaiting) return false;
        await store.SetStatusAsync(runId, RunStatus.Cancelled);
        await notifier.PublishAsync(new RunQueueEvent(runId, 0));
        await notifier.PublishAsync(new RunStatusEvent(runId, RunStatus.Cancelled, null));
        await PublishPositionsAsync();
        return true;
    }

    public override async Task StartAsync(CancellationToken cancellationToken)
    {
        // Runs still queued when the app stopped are picked up again, in order, before new ones can be added.
        foreach (int id in await store.QueuedAsync(cancellationToken))
        {
            lock (_gate) _waiting.Add(id);
            await _channel.Writer.WriteAsync(id, cancellationToken);
        }
        await base.StartAsync(cancellationToken);
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        await foreach (int runId in _channel.Reader.ReadAllAsync(stoppingToken))
        {
            bool resume;
            lock (_gate)
            {
                if (!_waiting.Remove(runId)) continue; // cancelled while waiting
                resume = _resume.Remove(runId);
            }
            await notifier.PublishAsync(new RunQueueEvent(runId, 0));
            await PublishPositionsAsync();
            await TrainAsync(runId, resume, stoppingToken);
        }
    }

    private async Task TrainAsync(int runId, bool resume, CancellationToken stoppingToken)
    {
        using var cancel = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken);
        lock (_gate) _current = (runId, cancel);
        var reports = Channel.CreateUnbounded<TrainingProgress>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        Task recorder = Task.CompletedTask;
        try
        {
            var run = await store.SetStatusAsync(runId, RunStatus.Training, cancellationToken: stoppingToken);
            await notifier.PublishAsync(new RunStatusEvent(runId, RunStatus.Training, null));
            var job = new TrainingJob(runId, TrainingSettings.FromJson(run.SettingsJson), await store.ReadDatasetAsync(runId, stoppingToken),
                store.RunDirectory(runId), resume ? run.LastCheckpoint : null);

            recorder = RecordAsync(runId, reports.Reader);
            var outcome = await runner.RunAsync(job, new ChannelProgress(reports.Writer), cancel.Token);
            reports.Writer.TryComplete();
            await recorder;

            await store.UpdateAsync(runId, r =>
            {
                r.FinalTrainLoss = outcome.FinalTrainLoss ?? r.FinalTrainLoss;
                r.FinalEvalLoss = outcome.FinalEvalLoss ?? r.FinalEvalLoss;
                r.LastCheckpoint = outcome.LastCheckpoint ?? r.LastCheckpoint;
            }, CancellationToken.None);
            await FinishAsync(runId, RunStatus.Completed, null);
        }
        catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
        {
            await Drain(reports, recorder);
            await FinishAsync(runId, RunStatus.Interrupted, null);
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
            await Drain(reports, recorder);
            await FinishAsync(runId, RunStatus.Cancelled, null);
        }
        catch (Exception e)
        {
            logger.LogError(e, "Run {RunId} failed", runId);
            await Drain(reports, recorder);
            await FinishAsync(runId, RunStatus.Failed, e.Message);
        }
        finally
        {
            lock (_gate) _current = null;
        }
    }

    private static async Task Drain(Channel<TrainingProgress> reports, Task recorder)
    {
        reports.Writer.TryComplete();
        try { await recorder; } catch (Exception) { /* already logged by RecordAsync */ }
    }

    private async Task FinishAsync(int runId, RunStatus status, string? error)
    {
        try
        {
            await store.SetStatusAsync(runId, status, error, CancellationToken.None);
        }
        catch (KeyNotFoundException)
        {
            return; // deleted meanwhile
        }
        await notifier.PublishAsync(new RunStatusEvent(runId, status, error));
    }

    /// <summary>Persists and publishes reports in the order the trainer made them.</summary>
    private async Task RecordAsync(int runId, ChannelReader<TrainingProgress> reader)
    {
        await foreach (var p in reader.ReadAllAsync())
        {
            _latest[runId] = p;
            try
            {
                if (p.Loss is not null || p.EvalLoss is not null)
                    await store.AddMetricAsync(RunMetric.From(runId, p, DateTime.UtcNow));
                await store.UpdateAsync(runId, r =>
                {
                    r.TotalSteps = p.TotalSteps;
                    r.LastStep = Math.Max(r.LastStep, p.Step);
                    if (p.CheckpointPath is not null) r.LastCheckpoint = p.CheckpointPath;
                });
            }
            catch (Exception e)
            {
                logger.LogWarning(e, "Could not save progress of run {RunId} at step {Step}", runId, p.Step);
            }
            await notifier.PublishAsync(new RunProgressEvent(runId, p));
        }
    }

    private async Task PublishPositionsAsync()
    {
        int[] waiting;
        lock (_gate) waiting = [.. _waiting];
        for (int i = 0; i < waiting.Length; i++)
            await notifier.PublishAsync(new RunQueueEvent(waiting[i], i + 1));
    }

    /// <summary>Synchronous hand-off into the recorder's channel (Progress&lt;T&gt; would reorder reports on the thread pool).</summary>
    private sealed class ChannelProgress(ChannelWriter<TrainingProgress> writer) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => writer.TryWrite(value);
    }
}
