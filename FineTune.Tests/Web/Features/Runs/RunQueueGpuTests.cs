using FineTune.Engine.Backend;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using Microsoft.Extensions.Logging.Abstractions;

namespace FineTune.Tests.Web.Features.Runs;

/// <summary>
/// The queue on a machine with several GPUs (fake devices: the scripted trainer stands in for the engine): runs that
/// ask for one GPU train at once on different GPUs, each run's memory estimate is checked against its GPU, and an
/// all-GPUs run takes every GPU.
/// </summary>
public sealed class RunQueueGpuTests : IAsyncLifetime
{
    private const long GiB = 1L << 30;
    private readonly RunTestServices _services = new();
    private readonly ScriptedTrainingRunner _runner = new();
    private RunQueue? _queue;

    private async Task<(RunQueue Queue, GpuPool Pool)> StartAsync(params GpuDevice[] gpus)
    {
        var pool = new GpuPool(gpus);
        _queue = new RunQueue(_services.Store, _services.Notifier, _runner, NullLogger<RunQueue>.Instance, pool);
        await _queue.StartAsync(CancellationToken.None);
        return (_queue, pool);
    }

    public Task InitializeAsync() => Task.CompletedTask;

    // IAsyncLifetime, not IAsyncDisposable: xUnit v2 never calls a test class's IAsyncDisposable.DisposeAsync, so the
    // queues kept running and every test's data folder stayed in /tmp.
    public async Task DisposeAsync()
    {
        if (_queue is not null)
        {
            await _queue.StopAsync(CancellationToken.None);
            _queue.Dispose();
        }
        _services.Dispose();
    }

    private async Task<int> NewRunAsync(TrainingSettings settings) =>
        (await _services.Store.CreateAsync(settings, RunStoreTests.Rows, "d.csv", null)).Id;

    /// <summary>
    /// Until no GPU is held: a run gives its GPUs back when its training task ends, just after it writes its final status
    /// (CI at 75ed0a8 read one still held right after both runs read Completed).
    /// </summary>
    private static async Task UntilNoGpuIsHeld(GpuPool pool)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while (pool.Busy.Count > 0)
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"GPUs {string.Join(", ", pool.Busy)} were never given back");
            await Task.Delay(20);
        }
    }

    private async Task UntilStatus(int runId, RunStatus status)
    {
        var deadline = DateTime.UtcNow.AddSeconds(10);
        while ((await _services.Store.GetAsync(runId))?.Status != status)
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException($"run {runId} never became {status}");
            await Task.Delay(20);
        }
    }

    private TrainingJob JobOf(int runId) => _runner.Jobs.Single(j => j.RunId == runId);

    private Task Started(int runId) => _runner.Script(runId).Started.Task.WaitAsync(TimeSpan.FromSeconds(10));

    [Fact]
    public async Task Two_one_gpu_runs_train_at_once_on_two_gpus_and_the_third_waits_for_a_free_one()
    {
        var (queue, pool) = await StartAsync(new GpuDevice(0, "Fake GPU A", 80 * GiB), new GpuDevice(1, "Fake GPU B", 80 * GiB));
        var oneGpu = new TrainingSettings { Gpus = GpuChoice.One };
        int first = await NewRunAsync(oneGpu), second = await NewRunAsync(oneGpu), third = await NewRunAsync(oneGpu);
        await queue.EnqueueAsync(first);
        await queue.EnqueueAsync(second);
        await queue.EnqueueAsync(third);

        await Started(first);
        await Started(second);
        Assert.Equal([first, second], queue.TrainingRunIds);
        Assert.Equal([0, 1], new[] { JobOf(first).Gpus!.Single(), JobOf(second).Gpus!.Single() }.Order());
        Assert.Equal([0, 1], pool.Busy.Order());
        Assert.Equal(1, queue.PositionOf(third));
        Assert.False(_runner.Script(third).Started.Task.IsCompleted);
        await UntilStatus(first, RunStatus.Training);
        await UntilStatus(second, RunStatus.Training);

        int freed = JobOf(second).Gpus!.Single();
        _runner.Script(second).Finish(0.5);
        await Started(third);
        Assert.Equal(freed, JobOf(third).Gpus!.Single());
        await UntilStatus(second, RunStatus.Completed);
        Assert.Equal(RunStatus.Training, (await _services.Store.GetAsync(first))!.Status);

        _runner.Script(first).Finish(0.4);
        _runner.Script(third).Finish(0.6);
        await UntilStatus(first, RunStatus.Completed);
        await UntilStatus(third, RunStatus.Completed);
        await UntilNoGpuIsHeld(pool);
        Assert.Empty(pool.Busy);
    }

    [Fact]
    public async Task Each_runs_memory_estimate_is_checked_against_its_gpu()
    {
        var big = new TrainingSettings { Model = "Qwen/Qwen2.5-7B-Instruct", Quantization = Quantization.None, Gpus = GpuChoice.One };
        long need = TrainingEstimator.LeastMemory(ModelCatalog.FactsOf(big)!, big).Total; // what the queue asks of a GPU
        var (queue, pool) = await StartAsync(new GpuDevice(0, "Small fake GPU", need / 2), new GpuDevice(1, "Large fake GPU", need * 2));
        int first = await NewRunAsync(big), second = await NewRunAsync(big);
        await queue.EnqueueAsync(first);
        await queue.EnqueueAsync(second);

        await Started(first);
        Assert.Equal([1], JobOf(first).Gpus);
        // GPU 0 is free but too small for the estimate: the second run waits for GPU 1.
        await Task.Delay(300);
        Assert.False(_runner.Script(second).Started.Task.IsCompleted);
        Assert.Equal(1, queue.PositionOf(second));
        Assert.Equal([1], pool.Busy);

        _runner.Script(first).Finish(0.5);
        await Started(second);
        Assert.Equal([1], JobOf(second).Gpus);
        _runner.Script(second).Finish(0.5);
        await UntilStatus(second, RunStatus.Completed);
    }

    [Fact]
    public async Task An_all_gpus_run_takes_every_gpu_and_the_next_run_waits_for_one()
    {
        var (queue, _) = await StartAsync(new GpuDevice(0, "Fake GPU A", 80 * GiB), new GpuDevice(1, "Fake GPU B", 80 * GiB));
        int all = await NewRunAsync(new TrainingSettings { Gpus = GpuChoice.All });
        int one = await NewRunAsync(new TrainingSettings { Gpus = GpuChoice.One });
        await queue.EnqueueAsync(all);
        await queue.EnqueueAsync(one);

        await Started(all);
        Assert.Equal([0, 1], JobOf(all).Gpus);
        await Task.Delay(200);
        Assert.False(_runner.Script(one).Started.Task.IsCompleted);

        _runner.Script(all).Finish(0.5);
        await Started(one);
        Assert.Single(JobOf(one).Gpus!);
        _runner.Script(one).Finish(0.5);
        await UntilStatus(one, RunStatus.Completed);
    }

    [Fact]
    public async Task Cancelling_a_run_that_waits_for_gpus_lets_the_next_one_start()
    {
        var (queue, _) = await StartAsync(new GpuDevice(0, "Fake GPU", 80 * GiB));
        var settings = new TrainingSettings { Gpus = GpuChoice.One };
        int first = await NewRunAsync(settings), second = await NewRunAsync(settings), third = await NewRunAsync(settings);
        await queue.EnqueueAsync(first);
        await queue.EnqueueAsync(second);
        await queue.EnqueueAsync(third);
        await Started(first);

        Assert.True(await queue.CancelAsync(second));
        _runner.Script(first).Finish(0.5);
        await Started(third);
        Assert.False(_runner.Script(second).Started.Task.IsCompleted);
        await UntilStatus(second, RunStatus.Cancelled);
        _runner.Script(third).Finish(0.5);
        await UntilStatus(third, RunStatus.Completed);
    }

    [Theory]
    [InlineData(GpuChoice.Auto, 11, 2, true)]   // a long run on a two-GPU machine: every GPU
    [InlineData(GpuChoice.Auto, 3, 2, false)]   // a short one: one GPU, the other stays free
    [InlineData(GpuChoice.Auto, 60, 1, false)]  // one GPU is all there is
    [InlineData(GpuChoice.One, 60, 2, false)]
    [InlineData(GpuChoice.All, 1, 2, true)]
    public void Auto_uses_every_gpu_when_the_run_would_take_long(GpuChoice choice, int minutes, int gpus, bool all) =>
        Assert.Equal(all, GpuPool.UsesAllGpus(new TrainingSettings { Gpus = choice }, TimeSpan.FromMinutes(minutes), gpus));
}
