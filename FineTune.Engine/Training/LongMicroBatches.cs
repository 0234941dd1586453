namespace FineTune.Engine.Training;

/// <summary>
/// Peak memory set by a run's usual micro-batches rather than its longest. Without gradient checkpointing a micro-batch
/// keeps every layer's activations for backward, in proportion to its tokens, so the longest one (a few packed rows that
/// happen to be long) sets the run's peak, and with CUDA graphs the size of the graphs' pool. A micro-batch longer than
/// the <see cref="TrainingOptions.LongMicroBatchPercentile"/> of the run's (its budget) runs the share (T − budget) / T of
/// its decoder layers, the first ones, checkpointed (CausalLM.CheckpointedShare): it then keeps about the budget's
/// activations (a checkpointed layer keeps its input, a few percent of its activations), for one more forward of those
/// layers in its backward. The other micro-batches run as before. On the 7B Q&amp;A benchmark's 250 micro-batches (8 packed
/// rows, padded to 7 graph shapes) the default budget is the 1,664-token shape: 38 micro-batches checkpoint some layers, the
/// 2,560-token ones, which set the graphs' pool, 10 of their 28.
/// <para>
/// Why the 80th percentile (docs/benchmarks.md, 2026-11-30 evening, call 28 on an H200): against the 95th (a 1,920-token
/// budget) the run peaked 0.76 GiB lower (21.21 against 21.98 GiB) for 1.5% fewer tokens a second; against the median
/// (1,408) 0.76 GiB higher for 1.5% more. The recomputed forwards cost little because few micro-batches are long.
/// </para>
/// With <see cref="TrainingOptions.GradientCheckpointing"/> on every layer is checkpointed anyway.
/// </summary>
public static class LongMicroBatches
{
    /// <summary>The share of micro-batches that run as they are by default: those up to this percentile of the run's token counts.</summary>
    public const double DefaultPercentile = 0.8;

    /// <summary>Refuses a percentile outside (0, 1] (NaN included): the one check of <see cref="Budget"/> and <see cref="TrainingOptions.Validate"/>.</summary>
    internal static void ThrowIfNotPercentile(double percentile, string paramName)
    {
        if (!(percentile > 0 && percentile <= 1))
            throw new ArgumentOutOfRangeException(paramName, percentile, $"The long-micro-batch percentile must be above 0 and at most 1; {DefaultPercentile} is the default.");
    }

    /// <summary>
    /// The budget of a run whose micro-batches hold <paramref name="tokens"/> tokens each, as they run (padded to their
    /// graph's shape): their <paramref name="percentile"/> by nearest rank; null where none is longer (nothing to checkpoint).
    /// </summary>
    public static long? Budget(IEnumerable<long> tokens, double percentile = DefaultPercentile)
    {
        ThrowIfNotPercentile(percentile, nameof(percentile));
        var sorted = tokens.Order().ToArray();
        if (sorted.Length == 0) return null;
        long budget = sorted[(int)Math.Ceiling(percentile * sorted.Length) - 1];
        return sorted[^1] > budget ? budget : null;
    }

    /// <summary>
    /// The share of decoder layers a micro-batch of <paramref name="tokens"/> runs checkpointed under <paramref name="budget"/>,
    /// where every micro-batch checkpoints <paramref name="runShare"/> (TrainingOptions.CheckpointedShare): above the budget
    /// enough more that it keeps what a micro-batch of the budget keeps, 1 − (budget / T)·(1 − runShare); else runShare.
    /// </summary>
    public static double CheckpointedShare(long tokens, long? budget, double runShare = 0) =>
        budget is long b && tokens > b ? 1 - b / (double)tokens * (1 - runShare) : runShare;
}
