using FineTune.Bench;
using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Distributed;
using FineTune.Engine.Training;
using FineTune.Tests.Adapters;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace FineTune.Tests.Training;

/// <summary>
/// Data-parallel training: each replica a disjoint share of every optimizer step, gradients summed over the replicas,
/// and the run equal to the single-device run of the same job. On the CPU the replicas are threads joined through host
/// memory (<see cref="HostCommunicator"/>): everything but NCCL itself. The GPU test does the same over NCCL.
/// </summary>
public sealed class DataParallelTests(ITestOutputHelper output) : IDisposable
{
    private static readonly string Model = TestFiles.Fixture("models/qwen2");
    private readonly string _folder = TestPaths.NewTempFolder("data-parallel");

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private static List<TrainingExample> Rows(params int[] lengths) =>
        [.. lengths.Select((length, i) => new TrainingExample(new int[length], new int[length], i + 1))];

    [Theory]
    [InlineData(new[] { 8 }, 2)]        // the benchmark's 8 rows a step, accumulation 1: each micro-batch split
    [InlineData(new[] { 8 }, 3)]
    [InlineData(new[] { 1, 1, 1, 1 }, 2)] // the tutorial's batch 1 × accumulation 4: whole micro-batches dealt out
    [InlineData(new[] { 4, 4, 3 }, 2)]
    [InlineData(new[] { 1 }, 2)]        // fewer rows than replicas: one replica idles this step
    public void Shares_are_disjoint_and_cover_the_window(int[] batchSizes, int world)
    {
        var random = new Random(5);
        int next = 0;
        var window = batchSizes.Select(size => Enumerable.Range(next, size).ToArray()).Select(b => { next += b.Length; return b; }).ToList();
        var rows = Rows([.. Enumerable.Range(0, next).Select(_ => random.Next(10, 400))]);

        var shares = Enumerable.Range(0, world).Select(rank => DataParallelSharding.Shard(window, rows, rank, world)).ToList();

        var all = shares.SelectMany(s => s.SelectMany(b => b)).ToList();
        Assert.Equal(Enumerable.Range(0, next), all.Order());
        foreach (var share in shares)
            foreach (var batch in share)
                Assert.True(batch.Length <= batchSizes.Max(), "a replica's micro-batch is never larger than the single-device one");
    }

    [Fact]
    public void Rows_are_balanced_by_tokens_not_by_count()
    {
        // One long row and seven short ones: by count 4/4 would give one replica 1,000 + 3×10 tokens and the other 40.
        var rows = Rows(1000, 10, 10, 10, 10, 10, 10, 10);
        int[][] window = [[0, 1, 2, 3, 4, 5, 6, 7]];
        var first = DataParallelSharding.Shard(window, rows, 0, 2).Single();
        var second = DataParallelSharding.Shard(window, rows, 1, 2).Single();
        Assert.Equal([0], first);
        Assert.Equal([1, 2, 3, 4, 5, 6, 7], second);
    }

    [Fact]
    public void Data_pointer_is_the_first_element_of_a_view()
    {
        using var values = tensor(new[] { 1f, 2f, 3f, 4f });
        using var tail = values.narrow(0, 2, 2);
        Assert.Equal(3f, BitConverter.Int32BitsToSingle(System.Runtime.InteropServices.Marshal.ReadInt32(TensorMemory.DataPointer(tail))));
    }

    [Fact]
    public void Every_process_the_app_starts_has_nvlink_multicast_off()
    {
        MulticastSafety.Apply();
        Assert.Equal("0", Environment.GetEnvironmentVariable("NCCL_NVLS_ENABLE"));
        Assert.Equal("1", Environment.GetEnvironmentVariable("TORCH_SYMM_MEM_DISABLE_MULTICAST"));
        Assert.Equal("1", Environment.GetEnvironmentVariable("NVSHMEM_DISABLE_NVLS"));
    }

    [Fact]
    [Trait(Category.Name, Category.Slow)]
    public void Two_replicas_train_like_one_device()
    {
        var comparison = DataParallelCheckCommand.Compare(Model, [CPU, CPU], ScalarType.Float32, rows: 64, _folder);
        output.WriteLine(comparison.ToJson().ToJsonString());

        Assert.True(comparison.Steps >= 10, $"{comparison.Steps} steps");
        Assert.True(comparison.MaxLossDiff <= 1e-5, $"largest loss difference {comparison.MaxLossDiff:G3}");
        Assert.True(comparison.MaxEvalLossDiff <= 1e-5, $"largest validation-loss difference {comparison.MaxEvalLossDiff:G3}");
        Assert.True(comparison.MaxGradNormRelDiff <= 1e-5, $"largest relative grad-norm difference {comparison.MaxGradNormRelDiff:G3}");
        Assert.Equal(0, comparison.MaxLearningRateDiff);
        Assert.True(comparison.SameCheckpoints, "the same checkpoint-N folders");
        Assert.True(comparison.AdapterRelDiffA <= 1e-5 && comparison.AdapterRelDiffB <= 1e-5,
            $"adapters differ: lora_A {comparison.AdapterRelDiffA:G3}, lora_B {comparison.AdapterRelDiffB:G3} (relative)");
    }

    [Fact]
    [Trait(Category.Name, Category.Slow)]
    public async Task Cancelling_stops_every_replica_at_the_same_step()
    {
        using var cancel = new CancellationTokenSource();
        var steps = new List<int>();
        var progress = new SynchronousProgress(p =>
        {
            steps.Add(p.Step);
            if (p.Step == 2) cancel.Cancel();
        });
        var job = DataParallelCheckCommand.Job(Model, 64, ScalarType.Float32, Path.Combine(_folder, "checkpoints")) with { Devices = [CPU, CPU] };

        var run = Task.Run(() => new FineTunePipeline().Run(job, progress, cancel.Token));

        var finished = await Task.WhenAny(run, Task.Delay(TimeSpan.FromMinutes(2)));
        Assert.True(finished == run, "the replicas did not stop");
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => run);
        Assert.Equal([1, 2], steps);
    }

    [Fact]
    [Trait(Category.Name, Category.Slow)]
    public void Step_phase_times_come_back_for_every_replica()
    {
        var job = DataParallelCheckCommand.Job(Model, 24, ScalarType.Float32, Path.Combine(_folder, "checkpoints")) with
        {
            Devices = [CPU, CPU],
            TimeStepPhases = true,
        };

        var outcome = new FineTunePipeline().Run(job);

        var phases = outcome.PhaseTimes!;
        Assert.Equal([0, 1], phases.Select(p => p.Rank));
        foreach (var replica in phases)
        {
            Assert.Equal(outcome.Training.History.Count, replica.Steps);
            Assert.Equal(StepPhaseClock.Phases, replica.MillisecondsPerStep.Keys);
            Assert.True(replica.MillisecondsPerStep["forward"] > 0 && replica.MillisecondsPerStep["backward"] > 0, $"rank {replica.Rank}: no forward/backward time");
        }
        Assert.Null(new FineTunePipeline().Run(job with { Devices = null, TimeStepPhases = false }).PhaseTimes);
    }

    [GpuFact]
    [Trait(Category.Name, Category.Gpu)]
    public void Two_gpus_train_like_one_within_bf16_tolerance()
    {
        var backend = ComputeBackend.Current;
        if (backend.Gpus.Count < 2)
        {
            output.WriteLine($"one GPU here ({backend.Description}): nothing to compare");
            return;
        }
        var comparison = DataParallelCheckCommand.Compare(Model, [.. backend.GpuDevices.Take(2)], ScalarType.BFloat16, rows: 96, _folder);
        output.WriteLine(comparison.ToJson().ToJsonString());
        Assert.True(comparison.WithinTolerance, comparison.ToJson().ToJsonString());
    }

    private sealed class SynchronousProgress(Action<TrainingProgress> report) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => report(value);
    }
}

/// <summary>A fact that runs only where an NVIDIA GPU is visible (skipped elsewhere, e.g. in CPU-only CI).</summary>
public sealed class GpuFactAttribute : FactAttribute
{
    public GpuFactAttribute()
    {
        if (!File.Exists("/dev/nvidiactl")) Skip = "needs an NVIDIA GPU";
    }
}
