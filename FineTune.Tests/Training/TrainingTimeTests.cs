using System.Diagnostics;
using FineTune.Engine.Adapters;
using FineTune.Engine.Data;
using FineTune.Engine.Distributed;
using FineTune.Engine.Training;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Data;
using Xunit.Abstractions;

namespace FineTune.Tests.Training;

/// <summary>
/// Tests that compare two timings run alone (another test training beside them would slow one timing and not the other),
/// with one intra-op thread: the fixture's kernels take microseconds, and OpenMP's barriers on a shared 2-core machine
/// made the same step take from 0.4 to 18 s (seen here), noise no three timed steps can average out. The process is warmed
/// first by a short training: the fixture's steps are milliseconds of host code, and in a fresh process its first hundred or
/// so steps ran up to 3x slower than later ones (measured: an estimate made after the run was within 10 % of it, one made
/// before, 2.7x over), a start-up cost a model of real size does not notice.
/// </summary>
[CollectionDefinition(nameof(TimingCollection), DisableParallelization = true)]
public sealed class TimingCollection : ICollectionFixture<TimingCollection.OneTorchThread>
{
    public sealed class OneTorchThread : IDisposable
    {
        private readonly int _threads;

        public OneTorchThread()
        {
            _ = FineTune.Engine.Backend.ComputeBackend.Current;
            _threads = TorchSharp.torch.get_num_threads();
            TorchSharp.torch.set_num_threads(1);
            new FineTunePipeline().Run(TrainingTimeTests.Job(300));
        }

        public void Dispose() => TorchSharp.torch.set_num_threads(_threads);
    }
}

/// <summary>The cost line fitted from timed steps, and the run's work as the trainer does it.</summary>
public sealed class CostLineTests
{
    private static TimedWork Work(long tokens, double seconds) => new(tokens, TimeSpan.FromSeconds(seconds));

    [Fact]
    public void Fits_the_fixed_and_per_token_parts_of_steps_of_different_lengths()
    {
        // 0.05 s a step + 0.001 s a token.
        var line = CostLine.Fit([Work(100, 0.15), Work(400, 0.45), Work(250, 0.30)]);
        Assert.Equal(0.05, line.FixedSeconds, 6);
        Assert.Equal(0.001, line.SecondsPerToken, 9);
        Assert.Equal(1.05, line.Seconds(1000), 6);
    }

    [Fact]
    public void Steps_of_nearly_one_length_give_time_proportional_to_tokens()
    {
        var line = CostLine.Fit([Work(100, 0.2), Work(105, 0.2), Work(110, 0.22)]);
        Assert.Equal(0, line.FixedSeconds);
        Assert.Equal(0.62 / 315, line.SecondsPerToken, 9);
    }

    [Fact]
    public void Noise_larger_than_the_effect_of_length_gives_a_flat_line()
    {
        var line = CostLine.Fit([Work(100, 0.3), Work(300, 0.1)]);
        Assert.Equal(0.2, line.FixedSeconds, 9);
        Assert.Equal(0, line.SecondsPerToken);
    }
}

/// <summary>
/// Measured estimates on the tiny Qwen2 fixture on the CPU: the engine times a few real steps and validation batches and
/// projects the run from its real examples; then the same job runs in full in the same process and the two are compared.
/// </summary>
[Trait(Category.Name, Category.Slow)]
[Collection(nameof(TimingCollection))]
public sealed class TrainingTimeTests(ITestOutputHelper output)
{
    private static readonly string Model = TestFiles.Fixture("models/qwen2");

    /// <summary>Tutorial rows with numbered questions, and answers of varied length (so steps differ in tokens).</summary>
    internal static QaRow[] Rows(int count) =>
    [
        .. Enumerable.Range(0, count).Select(i =>
        {
            var (question, answer) = QaTemplate.TutorialRows[i % QaTemplate.TutorialRows.Length];
            return new QaRow($"{question}（{i}）", string.Concat(Enumerable.Repeat(answer, 1 + i % 3)), SourceRow: i + 2);
        }),
    ];

    internal static FineTuneJob Job(int rows) => new()
    {
        ModelFolder = Model,
        Rows = Rows(rows),
        MaxSeqLength = 256,
        ValidationFraction = 0.1,
        Lora = new LoraSettings(8, 16, 0.05, ["q_proj", "k_proj", "v_proj", "o_proj"]),
        Training = new TrainingOptions { Epochs = 2, BatchSize = 2, GradientAccumulationSteps = 2, LoggingSteps = 5, EvalSteps = 10, Seed = 3 },
    };

    [Fact]
    public void On_two_devices_a_step_counts_its_largest_share_and_the_first_replicas_validation_batches()
    {
        var pipeline = new FineTunePipeline();
        var job = Job(40);
        var split = pipeline.Split(job);
        var options = job.Training;

        var one = RunWorkload.Of(split, options);
        var two = RunWorkload.Of(split, options, replicas: 2);

        Assert.Equal(1, one.Replicas);
        Assert.Equal(2, two.Replicas);
        Assert.Equal(one.Steps, two.Steps);
        Assert.Equal(one.Evaluations, two.Evaluations);
        var windows = Enumerable.Range(0, 2).SelectMany(epoch => LoraTrainer.EpochWindows(split.Train, options, epoch)).Take(one.Steps).ToList();
        long Tokens(IEnumerable<int[]> batches) => batches.Sum(b => b.Sum(i => (long)split.Train[i].Length));
        for (int step = 0; step < windows.Count; step++)
        {
            var shares = Enumerable.Range(0, 2).Select(rank => DataParallelSharding.Shard(windows[step], split.Train, options.Layout, rank, 2)).ToList();
            Assert.Equal(shares.Max(Tokens), two.StepTokens[step]);
            Assert.Equal(one.StepTokens[step], shares.Sum(Tokens));                     // the shares hold the step's rows
        }
        Assert.True(two.TrainTokens < one.TrainTokens, "two replicas take less time a step than one device");
        // Validation batches are dealt in turn from the longest: the first replica's are the first, third, ... of them.
        var batches = LoraTrainer.EvaluationBatches(split.Validation, options).Select(b => b.Sum(i => (long)split.Validation[i].Length)).ToList();
        Assert.Equal(batches.Where((_, i) => i % 2 == 0), two.EvaluationBatchTokens);
        Assert.Equal(batches, one.EvaluationBatchTokens);
    }

    [Fact]
    public void A_data_parallel_jobs_estimate_times_its_first_replicas_share_of_each_step()
    {
        var pipeline = new FineTunePipeline();
        var job = Job(60) with { Devices = [TorchSharp.torch.CPU, TorchSharp.torch.CPU] };
        var split = pipeline.Split(job);
        var options = job.Training;

        var estimate = pipeline.EstimateTime(job, steps: 3);

        Assert.Equal(2, estimate.Workload.Replicas);
        Assert.Equal(RunWorkload.Of(split, options, replicas: 2).StepTokens, estimate.Workload.StepTokens);
        // The timed steps are the run's longest and shortest full steps of the first epoch, then its first ones (EstimateTime),
        // each as the first replica trains it: its share.
        long Tokens(IEnumerable<int[]> batches) => batches.Sum(b => b.Sum(i => (long)split.Train[i].Length));
        var full = LoraTrainer.EpochWindows(split.Train, options, epoch: 0).Where(w => w.Sum(b => b.Length) == options.BatchSize * options.GradientAccumulationSteps).ToList();
        var timed = new[] { full.MaxBy(Tokens)!, full.MinBy(Tokens)! }.Concat(full).Distinct().Take(3).ToList();
        long[] shares = [.. timed.Select(w => Tokens(DataParallelSharding.Shard(w, split.Train, options.Layout, 0, 2)))];
        long[] measured = [.. estimate.Measurement.TrainSteps.Select(s => s.Tokens)];
        output.WriteLine($"timed {string.Join(", ", measured)}; first replica's shares {string.Join(", ", shares)}; whole steps {string.Join(", ", timed.Select(Tokens))}");
        Assert.Equal(shares, measured);
        Assert.All(timed, w => Assert.True(Tokens(DataParallelSharding.Shard(w, split.Train, options.Layout, 0, 2)) < Tokens(w), "a share holds part of its step"));
        Assert.Equal(estimate.Measurement.Project(estimate.Workload), estimate.Projection);
    }

    [Fact]
    public void The_workload_is_the_trainers_own_steps_tokens_and_evaluations()
    {
        var pipeline = new FineTunePipeline();
        var job = Job(40) with { Training = Job(40).Training with { Epochs = 1.5 } };
        var split = pipeline.Split(job);
        var workload = RunWorkload.Of(split, job.Training);

        var reports = new List<TrainingProgress>();
        var outcome = pipeline.Run(job, new SyncProgress(reports));

        Assert.Equal(outcome.Training.TotalSteps, workload.Steps);
        Assert.Equal(outcome.Training.History.Count(h => h.EvalLoss is not null), workload.Evaluations);
        Assert.Equal(split.Validation.Sum(e => (long)e.Length), workload.EvaluationTokens);
        // The trainer's tokens per second × elapsed is the tokens it took: the workload's train tokens.
        var last = reports[^1];
        Assert.Equal(workload.TrainTokens, last.TokensPerSecond!.Value * last.Elapsed.TotalSeconds, tolerance: 0.5);
    }

    [Fact]
    public void The_measured_estimate_is_within_30_percent_of_the_measured_run_on_the_cpu()
    {
        var pipeline = new FineTunePipeline();
        var job = Job(300);

        var estimate = pipeline.EstimateTime(job, steps: 3);
        var clock = Stopwatch.StartNew();
        var outcome = pipeline.Run(job);
        output.WriteLine("timed steps: " + string.Join(", ", estimate.Measurement.TrainSteps.Select(s => $"{s.Tokens} tokens {s.Time.TotalSeconds:0.000} s")) + $"; {estimate.Measurement.Step}");
        var run = outcome.LoadTime + outcome.TrainTime;

        var projection = estimate.Projection;
        output.WriteLine($"estimate {projection.Total.TotalSeconds:0.00} s (load {projection.Load.TotalSeconds:0.00}, train {projection.Training.TotalSeconds:0.00}, " +
            $"eval {projection.Evaluation.TotalSeconds:0.00}; {estimate.Measurement.SecondsPerStep:0.0000} s/step over {estimate.Measurement.TrainSteps.Count} steps); " +
            $"run {run.TotalSeconds:0.00} s (load {outcome.LoadTime.TotalSeconds:0.00}, train {outcome.TrainTime.TotalSeconds:0.00}; whole call {clock.Elapsed.TotalSeconds:0.00})");
        Assert.Equal(3, estimate.Measurement.TrainSteps.Count);
        Assert.True(estimate.Workload.Evaluations > 0 && projection.Evaluation > TimeSpan.Zero, "the estimate counts the evaluations");
        double ratio = projection.Total / run;
        Assert.InRange(ratio, 0.7, 1.3);
    }

    internal sealed class SyncProgress(List<TrainingProgress> reports) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => reports.Add(value);
    }
}
