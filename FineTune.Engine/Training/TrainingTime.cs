using FineTune.Engine.Data;
using FineTune.Engine.Distributed;

namespace FineTune.Engine.Training;

/// <summary>A timed piece of device work: its input tokens and how long it took, device work finished.</summary>
public readonly record struct TimedWork(long Tokens, TimeSpan Time);

/// <summary>
/// The cost of one unit of work (an optimizer step, a validation batch) as a line in its input tokens:
/// seconds = <see cref="FixedSeconds"/> + <see cref="SecondsPerToken"/> × tokens. The fixed part is what every step pays
/// whatever its length (kernel launches, the optimizer update, the host read); on a GPU with short rows it can be most
/// of the step, on a CPU almost none of it.
/// </summary>
public sealed record CostLine(double FixedSeconds, double SecondsPerToken)
{
    /// <summary>Below this ratio of the longest to the shortest sample, the two parts cannot be told apart.</summary>
    public const double MinimumSpread = 1.2;

    public double Seconds(long tokens) => FixedSeconds + SecondsPerToken * tokens;

    /// <summary>
    /// Least squares over the samples. Where their token counts barely differ, the line goes through the origin
    /// (time proportional to tokens): the parts cannot be separated then, and it does not matter much, since the run's
    /// steps lie in the same range. A negative slope (noise larger than the effect of length) gives a flat line; a
    /// negative intercept, a line through the origin.
    /// </summary>
    public static CostLine Fit(IReadOnlyList<TimedWork> samples)
    {
        if (samples.Count == 0) throw new ArgumentException("At least one timed sample is needed to fit a cost line.", nameof(samples));
        double[] x = [.. samples.Select(s => (double)s.Tokens)], y = [.. samples.Select(s => s.Time.TotalSeconds)];
        double sumX = x.Sum(), sumY = y.Sum();
        if (sumX == 0) return new CostLine(sumY / y.Length, 0);
        if (x.Max() < MinimumSpread * Math.Max(1, x.Min())) return new CostLine(0, sumY / sumX);
        double meanX = sumX / x.Length, meanY = sumY / y.Length;
        double covariance = x.Zip(y, (a, b) => (a - meanX) * (b - meanY)).Sum(), variance = x.Sum(a => (a - meanX) * (a - meanX));
        double slope = covariance / variance, intercept = meanY - slope * meanX;
        if (slope < 0) return new CostLine(meanY, 0);
        if (intercept < 0) return new CostLine(0, x.Zip(y, (a, b) => a * b).Sum() / x.Sum(a => a * a));
        return new CostLine(intercept, slope);
    }
}

/// <summary>
/// The work of a run, from its real examples (after the prompt template and max length) and its options: the input
/// tokens of every optimizer step (the trainer's own windows, every epoch), of every validation batch, and how many
/// times the validation split is evaluated. On <see cref="Replicas"/> devices (data parallel) the work whose time counts:
/// each step's largest share (the slowest replica sets the step's time) and the validation batches of the replica that
/// evaluates the most.
/// </summary>
public sealed record RunWorkload(IReadOnlyList<long> StepTokens, IReadOnlyList<long> EvaluationBatchTokens, int Evaluations)
{
    public int Steps => StepTokens.Count;
    public long TrainTokens => StepTokens.Sum();
    public long EvaluationTokens => EvaluationBatchTokens.Sum();

    /// <summary>The devices the run trains on, each its share of every step (1: one device, the whole step).</summary>
    public int Replicas { get; init; } = 1;

    public static RunWorkload Of(DataSplit split, TrainingOptions options, int replicas = 1)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(replicas, 1);
        var train = split.Train;
        if (train.Count == 0) return new RunWorkload([], [], 0) { Replicas = replicas };
        int stepsPerEpoch = options.StepsPerEpoch(train.Count), totalSteps = options.TotalSteps(train.Count);
        var shares = Enumerable.Range(0, replicas).Select(rank => new StepShare(rank, replicas)).ToList();
        var steps = new List<long>(totalSteps);
        for (int epoch = 0; steps.Count < totalSteps; epoch++)
            foreach (var window in LoraTrainer.EpochWindows(train, options, epoch).Take(totalSteps - steps.Count))
                steps.Add(shares.Max(share => Tokens(train, share.Of(window, train, options.Layout))));
        var validation = split.Validation;
        // The first replica's batches: dealt from the longest, it has the longest and the most (LoraTrainer.EvaluationBatches);
        // on one device, all of them (as a share of one is every step's whole window).
        var evaluated = LoraTrainer.EvaluationBatches(validation, options, shares[0]);
        long[] evaluationBatches = [.. evaluated.Select(batch => batch.Sum(i => (long)validation[i].Length))];
        return new RunWorkload(steps, evaluationBatches, validation.Count == 0 ? 0 : options.EvaluationCount(totalSteps, stepsPerEpoch)) { Replicas = replicas };
    }

    internal static long Tokens(IReadOnlyList<TrainingExample> rows, IEnumerable<int[]> window) => window.Sum(batch => batch.Sum(i => (long)rows[i].Length));
}

/// <summary>
/// What was timed on the device: the model load, optimizer steps (after a warm-up step) and validation batches (after a
/// warm-up batch), each batch net of <see cref="EvaluationCall"/>: what one call of the trainer's evaluation pays once
/// whatever its batches (switching modes, reading the loss back). Timed one batch a call, that cost would be counted for
/// every batch, where a run pays it once per evaluation.
/// </summary>
public sealed record SpeedMeasurement(string Device, TimeSpan LoadTime, IReadOnlyList<TimedWork> TrainSteps, IReadOnlyList<TimedWork> EvaluationBatches,
    TimeSpan EvaluationCall = default)
{
    public CostLine Step => CostLine.Fit(TrainSteps);

    public CostLine? EvaluationBatch => EvaluationBatches.Count == 0 ? null : CostLine.Fit(EvaluationBatches);

    /// <summary>Mean seconds per measured step.</summary>
    public double SecondsPerStep => TrainSteps.Average(s => s.Time.TotalSeconds);

    /// <summary>The run's time: the load, every step's cost at its tokens, each evaluation's call and validation batches times the evaluations (checkpoint saves are not counted).</summary>
    public TimeProjection Project(RunWorkload workload)
    {
        var step = Step;
        double train = workload.StepTokens.Sum(step.Seconds);
        double evaluation = EvaluationBatch is { } batch
            ? workload.Evaluations * (EvaluationCall.TotalSeconds + workload.EvaluationBatchTokens.Sum(batch.Seconds))
            : 0;
        return new TimeProjection(LoadTime, TimeSpan.FromSeconds(train), TimeSpan.FromSeconds(evaluation));
    }
}

/// <summary>A run's projected wall time, by part.</summary>
public sealed record TimeProjection(TimeSpan Load, TimeSpan Training, TimeSpan Evaluation)
{
    public TimeSpan Total => Load + Training + Evaluation;
}

/// <summary>A measured time estimate: what was timed, the run's work it was projected over, and the projection.</summary>
public sealed record TrainingTimeEstimate(SpeedMeasurement Measurement, RunWorkload Workload, TimeProjection Projection);
