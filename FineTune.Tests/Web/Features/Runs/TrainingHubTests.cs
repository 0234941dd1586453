using System.Collections.Concurrent;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using Microsoft.AspNetCore.SignalR.Client;
using Microsoft.Extensions.DependencyInjection;
using FineTune.Engine.Training;

namespace FineTune.Tests.Web.Features.Runs;

public sealed class TrainingHubTests : IDisposable
{
    private readonly ScriptedTrainingRunner _runner = new();
    private readonly WebAppHost _app;

    public TrainingHubTests() =>
        _app = new WebAppHost(services => services.AddSingleton<ITrainingRunner>(_runner));

    public void Dispose() => _app.Dispose();

    [Fact]
    public async Task Clients_in_a_run_group_get_progress_status_and_queue_place()
    {
        var store = _app.Services.GetRequiredService<RunStore>();
        var queue = _app.Services.GetRequiredService<RunQueue>();
        int first = (await store.CreateAsync(new TrainingSettings(), RunStoreTests.Rows, "a.csv", null)).Id;
        int second = (await store.CreateAsync(new TrainingSettings(), RunStoreTests.Rows, "b.csv", null)).Id;

        await using var connection = new HubConnectionBuilder().WithUrl(new Uri(_app.BaseAddress, TrainingHub.Path)).Build();
        var progress = new ConcurrentQueue<ProgressMessage>();
        var statuses = new ConcurrentQueue<StatusMessage>();
        var places = new ConcurrentQueue<QueueMessage>();
        connection.On<ProgressMessage>(nameof(ITrainingClient.Progress), progress.Enqueue);
        connection.On<StatusMessage>(nameof(ITrainingClient.StatusChanged), statuses.Enqueue);
        connection.On<QueueMessage>(nameof(ITrainingClient.QueuePosition), places.Enqueue);
        await connection.StartAsync();
        await connection.InvokeAsync("JoinRun", second);

        await queue.EnqueueAsync(first);
        await _runner.Script(first).Started.Task.WaitAsync(TimeSpan.FromSeconds(10));
        await queue.EnqueueAsync(second);
        await Until(() => places.Any(p => p.RunId == second && p.Position == 1), "queue place 1");

        _runner.Script(first).Finish(1);
        await _runner.Script(second).Started.Task.WaitAsync(TimeSpan.FromSeconds(10));
        _runner.Script(second).Report(new TrainingProgress(10, 30, 1, Loss: 1.75, LearningRate: 2e-4, TokensPerSecond: 321, Elapsed: TimeSpan.FromSeconds(3), Eta: TimeSpan.FromSeconds(6), GpuMemoryBytes: 1 << 30));
        _runner.Script(second).Finish(1.5);

        await Until(() => statuses.Any(s => s.Status == "completed"), "completed status");
        var p = Assert.Single(progress);
        Assert.Equal((second, 10, 30, 1.75, 321.0, 6.0), (p.RunId, p.Progress.Step, p.Progress.TotalSteps, p.Progress.Loss!.Value, p.Progress.TokensPerSecond!.Value, p.Progress.Eta!.Value.TotalSeconds));
        Assert.Equal(new[] { "queued", "training", "completed" }, statuses.Select(s => s.Status));
        Assert.All(statuses.Concat<object>(places), m => Assert.Equal(second, m is StatusMessage s ? s.RunId : ((QueueMessage)m).RunId));

        // A client joining later (page reload) gets the latest progress at once.
        await using var late = new HubConnectionBuilder().WithUrl(new Uri(_app.BaseAddress, TrainingHub.Path)).Build();
        var lateProgress = new ConcurrentQueue<ProgressMessage>();
        late.On<ProgressMessage>(nameof(ITrainingClient.Progress), lateProgress.Enqueue);
        await late.StartAsync();
        await late.InvokeAsync("JoinRun", second);
        await Until(() => !lateProgress.IsEmpty, "progress on join");
        Assert.Equal(10, lateProgress.Single().Progress.Step);
    }

    private static async Task Until(Func<bool> condition, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (!condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"Timed out waiting for: {what}");
            await Task.Delay(20);
        }
    }
}
