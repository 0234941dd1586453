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

    private static (List<int[]> Window, List<TrainingExample> Rows) Window(int[] batchSizes, int seed = 5)
    {
        var random = new Random(seed);
        int next = 0;
        var window = batchSizes.Select(size => Enumerable.Range(next, size).ToArray()).Select(b => { next += b.Length; return b; }).ToList();
        return (window, Rows([.. Enumerable.Range(0, next).Select(_ => random.Next(10, 400))]));
    }

    private static List<List<int[]>> Shares(List<int[]> window, List<TrainingExample> rows, BatchLayout layout, int world) =>
        [.. Enumerable.Range(0, world).Select(rank => DataParallelSharding.Shard(window, rows, layout, rank, world))];

    private static long Tokens(IEnumerable<int[]> share, List<TrainingExample> rows) => share.Sum(b => b.Sum(r => (long)rows[r].Length));

    [Theory]
    [InlineData(new[] { 8 }, 2, BatchLayout.Packed)]        // the benchmark's 8 rows a step, accumulation 1
    [InlineData(new[] { 8 }, 3, BatchLayout.Packed)]
    [InlineData(new[] { 8, 8 }, 2, BatchLayout.Packed)]     // 8 x accumulation 2: one micro-batch of 8 each
    [InlineData(new[] { 8, 8, 8 }, 2, BatchLayout.Packed)]
    [InlineData(new[] { 1, 1, 1, 1 }, 2, BatchLayout.Packed)] // the tutorial's batch 1 x accumulation 4
    [InlineData(new[] { 4, 4, 3 }, 2, BatchLayout.Packed)]  // an epoch's short last micro-batch
    [InlineData(new[] { 1 }, 2, BatchLayout.Packed)]        // fewer rows than replicas: one replica idles this step
    [InlineData(new[] { 8 }, 2, BatchLayout.LengthGrouped)]
    [InlineData(new[] { 8, 8 }, 2, BatchLayout.LengthGrouped)]
    [InlineData(new[] { 4, 4, 3 }, 2, BatchLayout.LengthGrouped)]
    [InlineData(new[] { 1, 1, 1 }, 2, BatchLayout.LengthGrouped)]
    [InlineData(new[] { 1 }, 2, BatchLayout.LengthGrouped)]
    public void Shares_are_disjoint_and_cover_the_window(int[] batchSizes, int world, BatchLayout layout)
    {
        var (window, rows) = Window(batchSizes);

        var shares = Shares(window, rows, layout, world);

        var all = shares.SelectMany(s => s.SelectMany(b => b)).ToList();
        Assert.Equal(Enumerable.Range(0, rows.Count), all.Order());
        foreach (var share in shares)
            foreach (var batch in share)
            {
                Assert.True(batch.Length <= batchSizes.Max(), "a replica's micro-batch is never larger than the single-device one");
                Assert.NotEmpty(batch);
                Assert.Equal(batch.Order(), batch); // rows keep their order
            }
    }

    [Fact]
    public void Rows_are_balanced_by_tokens_not_by_count()
    {
        // One long row and seven short ones: by count 4/4 would give one replica 1,000 + 3×10 tokens and the other 40.
        var rows = Rows(1000, 10, 10, 10, 10, 10, 10, 10);
        int[][] window = [[0, 1, 2, 3, 4, 5, 6, 7]];
        foreach (var layout in new[] { BatchLayout.Packed, BatchLayout.LengthGrouped })
        {
            Assert.Equal([0], DataParallelSharding.Shard(window, rows, layout, 0, 2).Single());
            Assert.Equal([1, 2, 3, 4, 5, 6, 7], DataParallelSharding.Shard(window, rows, layout, 1, 2).Single());
        }
    }

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    public void Packed_rows_of_two_micro_batches_make_one_full_micro_batch_a_replica_within_a_row_of_each_other(int seed)
    {
        // The Q&A benchmark's 8 rows x accumulation 2 on two GPUs: each replica packs 8 rows, as one GPU does, and the
        // replicas' tokens differ by less than the longest row (dealt whole, the two micro-batches differ by their sums).
        var (window, rows) = Window([8, 8], seed);

        var shares = Shares(window, rows, BatchLayout.Packed, 2);

        foreach (var share in shares) Assert.Equal(8, Assert.Single(share).Length);
        long gap = Math.Abs(Tokens(shares[0], rows) - Tokens(shares[1], rows));
        Assert.True(gap < rows.Max(r => r.Length), $"the replicas' tokens differ by {gap}");
    }

    [Fact]
    public void Packed_rows_beyond_one_micro_batch_a_replica_split_into_micro_batches_of_near_equal_rows()
    {
        var (window, rows) = Window([8, 8, 8]);

        foreach (var share in Shares(window, rows, BatchLayout.Packed, 2))
            Assert.Equal([6, 6], share.Select(b => b.Length));
    }

    [Fact]
    public void Length_grouped_micro_batches_go_whole_when_every_replica_gets_as_many()
    {
        var (window, rows) = Window([8, 8]);

        var shares = Shares(window, rows, BatchLayout.LengthGrouped, 2);

        Assert.Equal(window.OrderBy(b => b[0]).Select(b => b.ToList()), shares.SelectMany(s => s).OrderBy(b => b[0]).Select(b => b.ToList()));
        Assert.All(shares, share => Assert.Single(share));
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
