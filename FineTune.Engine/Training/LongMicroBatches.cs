namespace FineTune.Engine.Training;

/// <summary>
/// Peak memory set by a run's usual micro-batches rather than its longest. Without gradient checkpointing a micro-batch
/// keeps every layer's activations for backward, in proportion to its tokens, so the longest one (a few packed rows that
/// happen to be long) sets the run's peak, and with CUDA graphs the size of the graphs' pool. A micro-batch longer than
/// the <see cref="Percentile"/> of the run's (its budget) runs the share (T − budget) / T of its decoder layers, the first
/// ones, checkpointed (CausalLM.CheckpointedShare): it then keeps about the budget's activations (a checkpointed layer
/// keeps its input, a few percent of its activations), for one more forward of those layers in its backward. The other
/// micro-batches run as before. On the 7B Q&amp;A benchmark's 250 micro-batches (8 packed rows, padded to 7 graph shapes) the
/// budget is the 1,920-token shape: the 7 micro-batches of the 2,560-token shape, which set the graphs' pool, checkpoint 7
/// of their 28 layers. With <see cref="TrainingOptions.GradientCheckpointing"/> on every layer is checkpointed anyway.
/// </summary>
public static class LongMicroBatches
{
    /// <summary>The share of micro-batches that run as they are: those up to this percentile of the run's token counts.</summary>
    public const double Percentile = 0.95;

    /// <summary>
    /// The budget of a run whose micro-batches hold <paramref name="tokens"/> tokens each, as they run (padded to their
    /// graph's shape): the <see cref="Percentile"/> by nearest rank; null where none is longer (nothing to checkpoint).
    /// </summary>
    public static long? Budget(IEnumerable<long> tokens)
    {
        var sorted = tokens.Order().ToArray();
        if (sorted.Length == 0) return null;
        long budget = sorted[(int)Math.Ceiling(Percentile * sorted.Length) - 1];
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
