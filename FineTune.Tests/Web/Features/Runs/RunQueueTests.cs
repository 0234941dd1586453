using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using Microsoft.Extensions.Logging.Abstractions;
using FineTune.Engine.Training;

namespace FineTune.Tests.Web.Features.Runs;

public sealed class RunQueueTests : IAsyncLifetime
{
    private readonly RunTestServices _services = new();
    private readonly ScriptedTrainingRunner _runner = new();
    private readonly List<RunEvent> _events = [];
    private RunQueue _queue = null!;
    private IDisposable? _subscription;

    public async Task InitializeAsync()
    {
        _subscription = _services.Notifier.Subscribe(e => { lock (_events) _events.Add(e); return Task.CompletedTask; });
        _queue = new RunQueue(_services.Store, _services.Notifier, _runner, NullLogger<RunQueue>.Instance);
        await _queue.StartAsync(CancellationToken.None);
    }

    public async Task DisposeAsync()
    {
        await _queue.StopAsync(CancellationToken.None);
        _queue.Dispose();
        _subscription?.Dispose();
        _services.Dispose();
    }

    private async Task<int> NewRunAsync() =>
        (await _services.Store.CreateAsync(new TrainingSettings(), RunStoreTests.Rows, "d.csv", null)).Id;

    private static async Task Until(Func<Task<bool>> condition, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"Timed out waiting for: {what}");
            await Task.Delay(20);
        }
    }

    private Task UntilStatus(int runId, RunStatus status) =>
        Until(async () => (await _services.Store.GetAsync(runId))?.Status == status, $"run {runId} {status}");

    [Fact]
    public async Task Trains_one_run_at_a_time_in_order_with_queue_positions()
    {
        int first = await NewRunAsync(), second = await NewRunAsync(), third = await NewRunAsync();
        await _queue.EnqueueAsync(first);
        await _queue.EnqueueAsync(second);
        await _queue.EnqueueAsync(third);

        await _runner.Script(first).Started.Task.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(first, _queue.CurrentRunId);
        Assert.Equal((1, 2), (_queue.PositionOf(second), _queue.PositionOf(third)));
        Assert.False(_runner.Script(second).Started.Task.IsCompleted);
        Assert.Equal(RunStatus.Training, (await _services.Store.GetAsync(first))!.Status);

        _runner.Script(first).Finish(0.9);
        await _runner.Script(second).Started.Task.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(1, _queue.PositionOf(third));
        await UntilStatus(first, RunStatus.Completed);
        Assert.Equal(0.9, (await _services.Store.GetAsync(first))!.FinalTrainLoss);

        lock (_events)
            Assert.Contains(_events, e => e is RunQueueEvent { Position: 1 } q && q.RunId == third);
        _runner.Script(second).Finish(1);
        _runner.Script(third).Finish(1);
        await UntilStatus(third, RunStatus.Completed);
        Assert.Equal(new[] { first, second, third }, _runner.Jobs.Select(j => j.RunId));
    }

    [Fact]
    public async Task Progress_is_saved_published_and_kept_for_reattaching()
    {
        int run = await NewRunAsync();
        await _queue.EnqueueAsync(run);
        var script = _runner.Script(run);
        await script.Started.Task.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.Equal(RunStoreTests.Rows, _runner.Jobs.Single().Rows);

        script.Report(new TrainingProgress(10, 30, 1, Loss: 2.0, LearningRate: 2e-4, GradNorm: 0.75, TokensPerSecond: 100, Elapsed: TimeSpan.FromSeconds(5), Eta: TimeSpan.FromSeconds(10)));
        script.Report(new TrainingProgress(20, 30, 2, Loss: 1.2, EvalLoss: 1.4, CheckpointPath: "checkpoint-20"));
        script.Report(new TrainingProgress(21, 30, 2.1)); // no loss: not a metric row
        await Until(async () => (await _services.Store.GetAsync(run))!.LastStep == 21, "step 21 saved");

        var metrics = await _services.Store.MetricsAsync(run);
        Assert.Equal(new[] { 10, 20 }, metrics.Select(m => m.Step));
        // Every field of the engine's record that has a column arrives in the row.
        Assert.Equal((1.0, 2.0, 2e-4, 0.75, 100.0), (metrics[0].Epoch, metrics[0].Loss!.Value, metrics[0].LearningRate!.Value, metrics[0].GradNorm!.Value, metrics[0].TokensPerSecond!.Value));
        var stored = (await _services.Store.GetAsync(run))!;
        Assert.Equal((30, "checkpoint-20", 1.2, 1.4), (stored.TotalSteps, stored.LastCheckpoint, stored.FinalTrainLoss!.Value, stored.FinalEvalLoss!.Value));
        Assert.Equal(21, _queue.LatestProgress(run)!.Step);
        lock (_events)
            Assert.Equal(new[] { 10, 20, 21 }, _events.OfType<RunProgressEvent>().Select(e => e.Progress.Step));

        script.Finish(1.1);
        await UntilStatus(run, RunStatus.Completed);
    }

    [Fact]
    public async Task Cancelling_the_training_run_and_a_waiting_run()
    {
        int training = await NewRunAsync(), waiting = await NewRunAsync(), next = await NewRunAsync();
        await _queue.EnqueueAsync(training);
        await _queue.EnqueueAsync(waiting);
        await _queue.EnqueueAsync(next);
        await _runner.Script(training).Started.Task.WaitAsync(TimeSpan.FromSeconds(10));

        Assert.True(await _queue.CancelAsync(waiting));
        Assert.Equal(RunStatus.Cancelled, (await _services.Store.GetAsync(waiting))!.Status);
        Assert.Equal(1, _queue.PositionOf(next));

        Assert.True(await _queue.CancelAsync(training));
        await UntilStatus(training, RunStatus.Cancelled);
        await _runner.Script(next).Started.Task.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.False(_runner.Script(waiting).Started.Task.IsCompleted);
        _runner.Script(next).Finish(1);
        await UntilStatus(next, RunStatus.Completed);
    }

    [Fact]
    public async Task A_failing_trainer_fails_the_run_with_its_message_and_the_queue_goes_on()
    {
        int bad = await NewRunAsync(), good = await NewRunAsync();
        await _queue.EnqueueAsync(bad);
        await _queue.EnqueueAsync(good);
        _runner.Script(bad).Fail(new InvalidOperationException("CUDA out of memory: lower max length"));

        await UntilStatus(bad, RunStatus.Failed);
        Assert.Equal("CUDA out of memory: lower max length", (await _services.Store.GetAsync(bad))!.Error);
        lock (_events)
            Assert.Contains(_events, e => e is RunStatusEvent { Status: RunStatus.Failed } s && s.RunId == bad);
        _runner.Script(good).Finish(1);
        await UntilStatus(good, RunStatus.Completed);
    }

    [Fact]
    public async Task A_run_cannot_be_queued_twice_and_an_interrupted_run_resumes_from_its_checkpoint()
    {
        int run = await NewRunAsync();
        await _queue.EnqueueAsync(run);
        await _runner.Script(run).Started.Task.WaitAsync(TimeSpan.FromSeconds(10));
        await Assert.ThrowsAsync<InvalidOperationException>(() => _queue.EnqueueAsync(run));
        _runner.Script(run).Fail(new IOException("disk"));
        await UntilStatus(run, RunStatus.Failed);

        // The newest complete checkpoint on disk is what a resume continues from.
        string checkpoint = Path.Combine(_services.Store.CheckpointsDirectory(run), "checkpoint-50");
        Directory.CreateDirectory(checkpoint);
        File.WriteAllText(Path.Combine(checkpoint, "trainer_state.json"), "{}");
        var retry = _runner.Script(run);
        await _queue.EnqueueAsync(run, resume: true);
        await Until(() => Task.FromResult(_runner.Jobs.Count == 2), "second job");
        Assert.Equal(checkpoint, _runner.Jobs.Last().ResumeFromCheckpoint);
        retry.Finish(1);
        await UntilStatus(run, RunStatus.Completed);
    }

    [Fact]
    public void Notifier_subscriptions_end_on_dispose()
    {
        var notifier = new RunNotifier(NullLogger<RunNotifier>.Instance);
        var a = notifier.Subscribe(_ => Task.CompletedTask);
        var b = notifier.Subscribe(_ => throw new InvalidOperationException("a broken page"));
        Assert.Equal(2, notifier.SubscriberCount);
        Assert.True(notifier.PublishAsync(new RunStatusEvent(1, RunStatus.Queued, null)).IsCompletedSuccessfully);
        a.Dispose();
        a.Dispose();
        b.Dispose();
        Assert.Equal(0, notifier.SubscriberCount);
    }
}
