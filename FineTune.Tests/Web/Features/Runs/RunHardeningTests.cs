using FineTune.Engine.Training;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using FineTune.Web.Infrastructure;
using Microsoft.Data.Sqlite;
using Microsoft.EntityFrameworkCore;
using Microsoft.EntityFrameworkCore.Diagnostics;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;

namespace FineTune.Tests.Web.Features.Runs;

/// <summary>Issue 18, findings 1, 2 and 5: a run's failure never stops the queue; resume continues from the disk; starting is all or nothing.</summary>
public sealed class RunHardeningTests : IAsyncLifetime
{
    private readonly FaultyDatabase _faults = new();
    private readonly ScriptedTrainingRunner _runner = new();
    private ServiceProvider _provider = null!;
    private DataPaths _paths = null!;
    private RunStore _store = null!;
    private RunQueue _queue = null!;

    /// <summary>Fault injection for the database: while Full, every write fails as SQLite does on a full disk.</summary>
    private sealed class FaultyDatabase : SaveChangesInterceptor
    {
        public volatile bool Full;

        public override ValueTask<InterceptionResult<int>> SavingChangesAsync(DbContextEventData eventData, InterceptionResult<int> result, CancellationToken cancellationToken = default) =>
            Full ? throw new SqliteException("SQLite Error 13: 'database or disk is full'.", 13) : base.SavingChangesAsync(eventData, result, cancellationToken);
    }

    public async Task InitializeAsync()
    {
        _paths = new DataPaths(Directory.CreateTempSubdirectory("finetune-hardening-").FullName);
        var services = new ServiceCollection();
        services.AddDbContextFactory<RunDbContext>(o => o.UseSqlite($"Data Source={_paths.Database};Pooling=False").AddInterceptors(_faults));
        _provider = services.BuildServiceProvider();
        var contexts = _provider.GetRequiredService<IDbContextFactory<RunDbContext>>();
        Directory.CreateDirectory(_paths.Runs);
        await using (var db = await contexts.CreateDbContextAsync()) await db.Database.MigrateAsync();
        _store = new RunStore(contexts, _paths, NullLogger<RunStore>.Instance);
        _queue = new RunQueue(_store, new RunNotifier(NullLogger<RunNotifier>.Instance), _runner, NullLogger<RunQueue>.Instance);
        await _queue.StartAsync(CancellationToken.None);
    }

    public async Task DisposeAsync()
    {
        _faults.Full = false;
        await _queue.StopAsync(CancellationToken.None);
        _queue.Dispose();
        await _provider.DisposeAsync();
        Directory.Delete(_paths.Root, recursive: true);
    }

    private async Task<int> NewRunAsync() => (await _store.CreateAsync(new TrainingSettings(), RunStoreTests.Rows, "d.csv", null)).Id;

    private static async Task Until(Func<Task<bool>> condition, string what)
    {
        var deadline = DateTime.UtcNow.AddSeconds(15);
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"Timed out waiting for: {what}");
            await Task.Delay(20);
        }
    }

    [Fact]
    public async Task A_full_disk_fails_the_run_but_never_stops_the_queue()
    {
        int first = await NewRunAsync(), second = await NewRunAsync();
        await _queue.EnqueueAsync(first);
        await _runner.Script(first).Started.Task.WaitAsync(TimeSpan.FromSeconds(10));

        // The checkpoint write fails for lack of space, and so does every database write after it.
        _faults.Full = true;
        _runner.Script(first).Fail(new CheckpointFailure());
        await Until(() => Task.FromResult(_queue.CurrentRunId is null), "the failed run to end");
        await Task.Delay(200);
        // Before: the status write's SqliteException escaped ExecuteAsync, BackgroundService stopped the host (exit code 0).
        Assert.False(_queue.ExecuteTask!.IsCompleted, $"the queue stopped: {_queue.ExecuteTask.Exception?.GetBaseException().Message}");
        var shown = _queue.Current((await _store.GetAsync(first))!);
        Assert.Equal(RunStatus.Failed, shown.Status);
        Assert.Equal(RunFailureKind.DiskFull, RunFailure.Classify(shown.Error));

        // Space freed: the outcome is saved and the next run trains.
        _faults.Full = false;
        await _queue.EnqueueAsync(second);
        _runner.Script(second).Finish(1);
        await Until(async () => (await _store.GetAsync(second))!.Status == RunStatus.Completed, "the next run to complete");
        Assert.Equal(RunStatus.Failed, (await _store.GetAsync(first))!.Status);
    }

    private sealed class CheckpointFailure() : IOException("The checkpoint of step 40 could not be written: No space left on device : '/data/runs/1/checkpoints/checkpoint-40.partial/adapter_model.safetensors'");

    [Fact]
    public async Task Resume_continues_from_the_newest_checkpoint_on_disk_and_stores_no_metric_twice()
    {
        int run = await NewRunAsync();
        await _queue.EnqueueAsync(run);
        var script = _runner.Script(run);
        await script.Started.Task.WaitAsync(TimeSpan.FromSeconds(10));
        string checkpoints = Path.Combine(_paths.RunDirectory(run), "checkpoints");
        void Checkpoint(int step)
        {
            Directory.CreateDirectory(Path.Combine(checkpoints, $"checkpoint-{step}"));
            File.WriteAllText(Path.Combine(checkpoints, $"checkpoint-{step}", "trainer_state.json"), "{}");
        }
        Checkpoint(10);
        script.Report(new TrainingProgress(10, 40, 1, Loss: 2.0, CheckpointPath: Path.Combine(checkpoints, "checkpoint-10")));
        Checkpoint(20); // saved after the last report: the database still names checkpoint-10
        script.Report(new TrainingProgress(25, 40, 2, Loss: 1.5));
        await Until(async () => (await _store.GetAsync(run))!.LastStep == 25, "step 25 saved");
        script.Fail(new InvalidOperationException("stopped"));
        await Until(async () => (await _store.GetAsync(run))!.Status == RunStatus.Failed, "failed");
        Assert.EndsWith("checkpoint-10", (await _store.GetAsync(run))!.LastCheckpoint);

        var resumed = _runner.Script(run);
        await _queue.EnqueueAsync(run, resume: true);
        await Until(() => Task.FromResult(_runner.Jobs.Count == 2), "the resumed job");
        Assert.Equal(Path.Combine(checkpoints, "checkpoint-20"), _runner.Jobs.Last().ResumeFromCheckpoint);
        resumed.Report(new TrainingProgress(25, 40, 2, Loss: 1.4));
        resumed.Finish(1.3);
        await Until(async () => (await _store.GetAsync(run))!.Status == RunStatus.Completed, "completed");
        // Step 25 was logged before the failure and again after the resume: one row, the resumed run's.
        var metrics = await _store.MetricsAsync(run);
        Assert.Equal([10, 25], metrics.Select(m => m.Step));
        Assert.Equal(1.4, metrics[1].Loss);
    }

    [TinyDiskFact]
    public async Task A_full_disk_at_start_leaves_no_run_behind()
    {
        using var disk = new TinyDisk(2 << 20);
        using var provider = new ServiceCollection()
            .AddDbContextFactory<RunDbContext>(o => o.UseSqlite($"Data Source={Path.Combine(disk.Folder, "finetune.db")};Pooling=False")).BuildServiceProvider();
        var contexts = provider.GetRequiredService<IDbContextFactory<RunDbContext>>();
        var paths = new DataPaths(disk.Folder);
        Directory.CreateDirectory(paths.Runs);
        await using (var db = await contexts.CreateDbContextAsync()) await db.Database.MigrateAsync();
        var store = new RunStore(contexts, paths, NullLogger<RunStore>.Instance);

        // 3 MB of rows on a 2 MB disk: dataset.jsonl cannot be written whole.
        var rows = Enumerable.Range(0, 3000).Select(i => new FineTune.Engine.Data.QaRow($"question {i}", new string('答', 500), "", null, i + 2)).ToList();
        await Assert.ThrowsAnyAsync<IOException>(() => store.CreateAsync(new TrainingSettings(), rows, "big.csv", null));

        // Before: a queued run with a truncated dataset.jsonl, picked up and failed on the next boot.
        Assert.Empty(await store.ListAsync());
        Assert.Empty(await store.QueuedAsync());
        Assert.Empty(Directory.GetDirectories(paths.Runs));
    }
}
