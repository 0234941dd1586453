using FineTune.Engine.Training;
using System.Collections.Concurrent;
using System.Threading.Channels;
using FineTune.Web.Features.Data;
using FineTune.Web.Features.Settings;
using FineTune.Web.Infrastructure;

namespace FineTune.Web.Features.Runs;

/// <summary>
/// Starts runs in the order they were queued, each when the GPUs it asks for are free and hold its memory estimate
/// (<see cref="GpuPool"/>): two one-GPU runs train at once on a two-GPU machine; on the CPU one run at a time. The head
/// of the queue waits for its GPUs (runs behind it do not overtake it). Fed by a channel; keeps the waiting list for
/// queue positions and the latest progress of each run for pages that reattach after a reload.
/// </summary>
public sealed class RunQueue(RunStore store, RunNotifier notifier, ITrainingRunner runner, ILogger<RunQueue> logger, GpuPool? gpus = null, DataFolderStatus? dataFolder = null) : BackgroundService
{
    private readonly GpuPool _gpus = gpus ?? new GpuPool([]);
    private readonly SemaphoreSlim _gpusChanged = new(0);
    private readonly List<(int RunId, CancellationTokenSource Cancel)> _training = [];
    private readonly List<Task> _running = [];
    private readonly Channel<int> _channel = Channel.CreateUnbounded<int>(new UnboundedChannelOptions { SingleReader = true });
    private readonly Lock _gate = new();
    private readonly List<int> _waiting = [];
    private readonly ConcurrentDictionary<int, TrainingProgress> _latest = new();
    private readonly HashSet<int> _resume = [];
    private readonly ConcurrentDictionary<int, (RunStatus Status, string? Error)> _unsaved = new();

    /// <summary>The run training now, if any (the earliest started when several are).</summary>
    public int? CurrentRunId { get { lock (_gate) return _training.Count == 0 ? null : _training[0].RunId; } }

    /// <summary>Every run training now, in the order they started.</summary>
    public IReadOnlyList<int> TrainingRunIds { get { lock (_gate) return [.. _training.Select(t => t.RunId)]; } }

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
    public async Task<Run> StartNewAsync(TrainingSettings settings, IReadOnlyList<FineTune.Engine.Data.QaRow> rows, string originalFileName, byte[]? originalFile, CancellationToken cancellationToken = default) =>
        await QueueAsync(await store.CreateAsync(settings, rows, originalFileName, originalFile, cancellationToken));

    /// <summary>Creates and queues a run of a chat dataset (its conversations).</summary>
    public async Task<Run> StartNewChatAsync(TrainingSettings settings, IReadOnlyList<FineTune.Engine.Data.Conversation> conversations, string originalFileName, byte[]? originalFile, CancellationToken cancellationToken = default) =>
        await QueueAsync(await store.CreateChatAsync(settings, conversations, originalFileName, originalFile, cancellationToken));

    private async Task<Run> QueueAsync(Run run)
    {
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
            if (!wasWaiting && _training.FindIndex(t => t.RunId == runId) is int i and >= 0)
            {
                _training[i].Cancel.Cancel();
                return true;
            }
        }
        if (!wasWaiting) return false;
        _gpusChanged.Release(); // the head may have been this run, waiting for GPUs
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
        void OnReleased() => _gpusChanged.Release();
        _gpus.Released += OnReleased;
        try
        {
            await foreach (int runId in _channel.Reader.ReadAllAsync(stoppingToken))
            {
                // Nothing one run does may end this loop: BackgroundService's default on an escaping exception is to stop
                // the whole app (seen: a full disk failed the checkpoint, then the status write, and the web app exited).
                try
                {
                    await StartNextAsync(runId, stoppingToken);
                }
                catch (OperationCanceledException) when (stoppingToken.IsCancellationRequested)
                {
                    return;
                }
                catch (Exception e)
                {
                    logger.LogError(e, "The queue could not start run {RunId}; it goes on with the next", runId);
                }
            }
        }
        finally
        {
            _gpus.Released -= OnReleased;
            Task[] running;
            lock (_gate) running = [.. _running];
            await Task.WhenAll(running); // each ends as interrupted when the app stops (TrainAsync never throws)
        }
    }

    /// <summary>Waits for the GPUs <paramref name="runId"/> asks for, then starts it on its own task.</summary>
    private async Task StartNextAsync(int runId, CancellationToken stoppingToken)
    {
        var lease = await WaitForGpusAsync(runId, stoppingToken);
        if (lease is null) return; // cancelled while waiting
        bool resume;
        var cancel = CancellationTokenSource.CreateLinkedTokenSource(stoppingToken);
        lock (_gate)
        {
            if (!_waiting.Remove(runId))
            {
                lease.Dispose();
                cancel.Dispose();
                return;
            }
            resume = _resume.Remove(runId);
            _training.Add((runId, cancel));
        }
        await SaveUnsavedOutcomesAsync();
        await notifier.PublishAsync(new RunQueueEvent(runId, 0));
        await PublishPositionsAsync();
        var training = Task.Run(() => TrainAsync(runId, resume, lease, cancel, stoppingToken), CancellationToken.None);
        lock (_gate)
        {
            _running.RemoveAll(t => t.IsCompleted);
            _running.Add(training);
        }
    }

    /// <summary>Waits until the GPUs run <paramref name="runId"/> asks for are free; null when it was cancelled meanwhile.</summary>
    private async Task<GpuLease?> WaitForGpusAsync(int runId, CancellationToken stoppingToken)
    {
        GpuRequest? request = null;
        while (true)
        {
            lock (_gate)
                if (!_waiting.Contains(runId)) return null;
            request ??= await RequestForAsync(runId, stoppingToken);
            if (_gpus.TryTake(request) is { } lease) return lease;
            await _gpusChanged.WaitAsync(stoppingToken);
        }
    }

    /// <summary>The run's GPU choice and memory estimate; a run whose settings cannot be read asks for one GPU and fails when it starts.</summary>
    private async Task<GpuRequest> RequestForAsync(int runId, CancellationToken stoppingToken)
    {
        try
        {
            var run = await store.GetAsync(runId);
            if (run is null) return new GpuRequest(false, 0);
            var rows = (await store.ReadDatasetAsync(runId, stoppingToken))
                .Concat((await store.ReadConversationsAsync(runId, stoppingToken)).Select(ChatDatasetReader.SizingRow)).ToList();
            return _gpus.RequestFor(TrainingSettings.FromJson(run.SettingsJson), rows.Count, rows.Sum(TrainingEstimator.EstimateTokens));
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            logger.LogWarning(e, "Run {RunId}: its GPU needs could not be worked out; it asks for one GPU", runId);
            return new GpuRequest(false, 0);
        }
    }

    private async Task TrainAsync(int runId, bool resume, GpuLease lease, CancellationTokenSource cancel, CancellationToken stoppingToken)
    {
        using var heldGpus = lease;
        using var runCancel = cancel;
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
                store.RunDirectory(runId), resumePoint?.Folder, lease.Indices) { Conversations = await store.ReadConversationsAsync(runId, stoppingToken) };

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
            lock (_gate) _training.RemoveAll(t => t.RunId == runId);
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
        if (_unsaved.TryGetValue(run.Id, out var outcome) && run.Status == RunStatus.Training && !TrainingRunIds.Contains(run.Id))
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
