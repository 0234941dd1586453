using FineTune.Engine.Training;
using System.Collections.Concurrent;
using System.Threading.Channels;
using FineTune.Web.Features.Settings;
using FineTune.Web.Infrastructure;

namespace FineTune.Web.Features.Runs;

/// <summary>
/// Trains one run at a time (one GPU), in the order runs were queued. Fed by a channel; keeps the waiting
/// list for queue positions and the latest progress of each run for pages that reattach after a reload.
/// </summary>
public sealed class RunQueue(RunStore store, RunNotifier notifier, ITrainingRunner runner, ILogger<RunQueue> logger, DataFolderStatus? dataFolder = null) : BackgroundService
{
    private readonly Channel<int> _channel = Channel.CreateUnbounded<int>(new UnboundedChannelOptions { SingleReader = true });
    private readonly Lock _gate = new();
    private readonly List<int> _waiting = [];
    private readonly ConcurrentDictionary<int, TrainingProgress> _latest = new();
    private readonly HashSet<int> _resume = [];
    private readonly ConcurrentDictionary<int, (RunStatus Status, string? Error)> _unsaved = new();
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
        await SaveUnsavedOutcomesAsync();
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

    /// <summary>
    /// "Start training": stores the run with its dataset and queues it, or leaves nothing behind (the row and folder
    /// are removed again when queueing fails).
    /// </summary>
    public async Task<Run> StartNewAsync(TrainingSettings settings, IReadOnlyList<FineTune.Engine.Data.QaRow> rows, string originalFileName, byte[]? originalFile, CancellationToken cancellationToken = default)
    {
        var run = await store.CreateAsync(settings, rows, originalFileName, originalFile, cancellationToken);
        try
        {
            await EnqueueAsync(run.Id);
            return run;
        }
        catch (Exception) when (!IsWaiting(run.Id))
        {
            try { await store.DeleteAsync(run.Id, CancellationToken.None); }
            catch (Exception e) { logger.LogWarning("Run {RunId} could not be queued nor removed: {Problem}", run.Id, e.Message); }
            throw;
        }
    }

    private bool IsWaiting(int runId)
    {
        lock (_gate) return _waiting.Contains(runId);
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
        // Runs still queued when the app stopped are picked up again, in order, before new ones can be added
        // (unless the data folder could not be opened: then there is nothing to read, and the pages say why).
        if (dataFolder is { IsUsable: false })
        {
            await base.StartAsync(cancellationToken);
            return;
        }
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
            // Nothing one run does may end this loop: BackgroundService's default on an escaping exception is to stop
            // the whole app (seen: a full disk failed the checkpoint, then the status write, and the web app exited).
            try
            {
                bool resume;
                lock (_gate)
                {
                    if (!_waiting.Remove(runId)) continue; // cancelled while waiting
                    resume = _resume.Remove(runId);
                }
                await SaveUnsavedOutcomesAsync();
                await notifier.PublishAsync(new RunQueueEvent(runId, 0));
                await PublishPositionsAsync();
                await TrainAsync(runId, resume, stoppingToken);
            }
            catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
            {
                return;
            }
            catch (Exception e)
            {
                logger.LogError(e, "The queue could not handle run {RunId}; it goes on with the next", runId);
            }
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
            // Resume from the newest complete checkpoint on disk (what the database last recorded may be older, or pruned).
            var resumePoint = resume ? store.ResumePoint(runId) : null;
            await store.RewindToAsync(runId, resumePoint, stoppingToken);
            if (resumePoint is not null)
                logger.LogInformation("Run {RunId} resumes from step {Step} ({Checkpoint})", runId, resumePoint.Step, resumePoint.Folder);
            var job = new TrainingJob(runId, TrainingSettings.FromJson(run.SettingsJson), await store.ReadDatasetAsync(runId, stoppingToken),
                store.RunDirectory(runId), resumePoint?.Folder);

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
            await FinishAsync(runId, RunStatus.Failed, RunFailure.Message(e));
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
            _unsaved.TryRemove(runId, out _);
        }
        catch (KeyNotFoundException)
        {
            return; // deleted meanwhile
        }
        catch (Exception e)
        {
            // The database cannot be written (a full or read-only disk): keep the outcome in memory for the pages, try
            // again before the next run, and a restart marks the run interrupted if it never could be saved.
            logger.LogError("Run {RunId} ended {Status} but that could not be saved: {Problem}", runId, status, e.Message);
            _unsaved[runId] = (status, error);
        }
        await notifier.PublishAsync(new RunStatusEvent(runId, status, error));
    }

    /// <summary>The run as the pages should show it: with an outcome the database could not take yet.</summary>
    public Run Current(Run run)
    {
        if (_unsaved.TryGetValue(run.Id, out var outcome) && run.Status == RunStatus.Training && CurrentRunId != run.Id)
        {
            run.Status = outcome.Status;
            run.Error = outcome.Error ?? run.Error;
        }
        return run;
    }

    private async Task SaveUnsavedOutcomesAsync()
    {
        foreach (var (runId, (status, error)) in _unsaved.ToArray())
        {
            try
            {
                await store.SetStatusAsync(runId, status, error, CancellationToken.None);
                _unsaved.TryRemove(runId, out _);
            }
            catch (KeyNotFoundException)
            {
                _unsaved.TryRemove(runId, out _);
            }
            catch (Exception e)
            {
                logger.LogWarning("The outcome of run {RunId} still cannot be saved: {Problem}", runId, e.Message);
            }
        }
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
