using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Models;
using FineTune.Engine.Training;
using FineTune.Tests.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Tests.Training;

public class LongMicroBatchesTests
{
    /// <summary>
    /// The 7B Q&amp;A benchmark's micro-batches as they run (tools/bench/reference.py make-data, 2,000 rows, 8 a step, packed
    /// and padded to the 7 graph shapes LoraTrainer.GraphShapesOf chooses): tokens and how many micro-batches have them.
    /// </summary>
    private static readonly (long Tokens, int Count)[] QaBenchmark =
        [(1152, 31), (1280, 37), (1408, 62), (1536, 42), (1664, 40), (1920, 31), (2560, 7)];

    [Fact]
    public void The_budget_is_the_80th_percentile_and_only_longer_micro_batches_checkpoint()
    {
        var tokens = QaBenchmark.SelectMany(s => Enumerable.Repeat(s.Tokens, s.Count)).ToList();
        Assert.Equal(250, tokens.Count);
        // Nearest rank: the 200th of 250, which falls in the 1,664-token shape (micro-batches 173 to 212).
        Assert.Equal(1664, LongMicroBatches.Budget(tokens));
        Assert.Equal(38, tokens.Count(t => t > 1664));
        Assert.Equal(0, LongMicroBatches.CheckpointedShare(1664, 1664));
        Assert.Equal(0, LongMicroBatches.CheckpointedShare(1152, 1664));
        Assert.Equal(0.35, LongMicroBatches.CheckpointedShare(2560, 1664), 12);
        Assert.Equal(0, LongMicroBatches.CheckpointedShare(2560, null));
    }

    [Fact]
    public void Another_percentile_sets_another_budget()
    {
        var tokens = QaBenchmark.SelectMany(s => Enumerable.Repeat(s.Tokens, s.Count)).ToList();
        // Nearest rank: the 238th of 250 is in the 1,920-token shape (213 to 243); the 125th in the 1,408 one (69 to 130).
        Assert.Equal(1920, LongMicroBatches.Budget(tokens, 0.95));
        Assert.Equal(0.25, LongMicroBatches.CheckpointedShare(2560, 1920));
        Assert.Equal(1408, LongMicroBatches.Budget(tokens, 0.5));
        Assert.Null(LongMicroBatches.Budget(tokens, 1.0));                           // the longest: nothing above it
        Assert.Throws<ArgumentOutOfRangeException>(() => LongMicroBatches.Budget(tokens, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => LongMicroBatches.Budget(tokens, 1.5));
        Assert.Throws<ArgumentOutOfRangeException>(() => LongMicroBatches.Budget(tokens, double.NaN)); // was an index out of range
    }

    [Theory]
    [InlineData(0.0)]
    [InlineData(-0.5)]
    [InlineData(1.01)]
    [InlineData(double.NaN)]
    public void A_percentile_outside_0_to_1_fails_the_options_validation(double percentile)
    {
        var options = new TrainingOptions { LongMicroBatchPercentile = percentile };
        var e = Assert.Throws<ArgumentOutOfRangeException>(options.Validate);
        Assert.Equal(nameof(TrainingOptions.LongMicroBatchPercentile), e.ParamName);
        new TrainingOptions { LongMicroBatchPercentile = 1.0 }.Validate();
        new TrainingOptions().Validate();
    }

    [Fact]
    public void Where_every_micro_batch_checkpoints_a_share_a_long_one_checkpoints_enough_more_to_keep_what_the_budget_keeps()
    {
        Assert.Equal(0.5, LongMicroBatches.CheckpointedShare(6, 6, runShare: 0.5));
        Assert.Equal(0.5, LongMicroBatches.CheckpointedShare(30, null, runShare: 0.5));
        // 30 tokens against a budget of 6, half the layers already: kept 30 × (1 − s) = 6 × 0.5, s = 0.9.
        Assert.Equal(0.9, LongMicroBatches.CheckpointedShare(30, 6, runShare: 0.5), 12);
        Assert.Equal(0.8, LongMicroBatches.CheckpointedShare(30, 6), 12);
    }

    [Fact]
    public void Runs_whose_longest_micro_batch_is_usual_get_no_budget()
    {
        Assert.Null(LongMicroBatches.Budget([]));
        Assert.Null(LongMicroBatches.Budget(Enumerable.Repeat(2048L, 60)));       // dense 4 x 512: one shape
        Assert.Null(LongMicroBatches.Budget([40, 55, 61, 38, 70], 0.95));       // five micro-batches: the 95th percentile is the longest
        Assert.Equal(61, LongMicroBatches.Budget([40, 55, 61, 38, 70]));        // the 80th is the 4th: the longest checkpoints 9/70
        Assert.Equal(20, LongMicroBatches.Budget([.. Enumerable.Repeat(20L, 20), 90]));     // 21 micro-batches: one is above
    }
}

/// <summary>
/// LoraTrainer with long micro-batches on a fixture model (fp32, CPU): the longest micro-batch of a run checkpoints the
/// share of its layers LongMicroBatches gives, the others none, and every step's loss and gradient norm equal those of the
/// same run with the option off (checkpointing recomputes the activations it would have kept).
/// </summary>
public class LongMicroBatchesTrainerTests
{
    public LongMicroBatchesTrainerTests() => _ = ComputeBackend.Current;

    /// <summary>24 rows of 6 tokens and one of 30: a micro-batch a row (batch 1), so the long row is the one above the budget.</summary>
    private static List<TrainingExample> Rows()
    {
        var rows = TrainerTests.SyntheticRows(24);
        int[] ids = [.. Enumerable.Range(0, 30).Select(i => i * 11 % 900 + 5)];
        int[] targets = [.. Enumerable.Range(0, 30).Select(i => i >= 10 && i + 1 < 30 ? ids[i + 1] : TrainingExamples.IgnoreIndex)];
        rows.Insert(9, new TrainingExample(ids, targets, 100));
        return rows;
    }

    private static (IReadOnlyList<StepRecord> History, List<(long Tokens, double Share)> Shares) Train(bool longBatches, double runShare = 0, bool probe = false)
    {
        using var lm = ModelLoader.Load(ModelFixtures.Folder("qwen2"), new ModelLoadOptions { DType = ScalarType.Float32 });
        var model = new SharesRecorded(new CausalLmTraining(lm));
        var settings = new LoraSettings(Rank: 4, Alpha: 8, Dropout: 0.1);
        LoraInjector.Attach(model.NamedLinears(), settings, seed: 3);
        var options = new TrainingOptions
        {
            Epochs = 1, BatchSize = 1, GradientAccumulationSteps = 5, LearningRate = 5e-3, Seed = 4,
            GradientCheckpointing = false, CheckpointLongMicroBatches = longBatches, CheckpointedShare = runShare,
        };
        var rows = Rows();
        // probe: the time estimate's way, a few of the run's rows trained with the run's budget (LoraTrainer.BudgetFrom).
        var trainer = new LoraTrainer(model, settings, "qwen2") { BudgetFrom = probe ? (rows, options) : null };
        var trained = probe ? [rows[0], rows[9], rows[1]] : rows;
        var result = trainer.Train(new DataSplit(trained, []), options);
        Assert.Equal(0, lm.CheckpointedShare);                                   // reset when training ends
        return (result.History, model.Shares);
    }

    [Fact]
    public void The_longest_micro_batch_checkpoints_its_share_of_layers_with_the_losses_of_kept_activations()
    {
        long before = GradientCheckpoint.CheckpointedCalls;
        var on = Train(longBatches: true);
        long checkpointed = GradientCheckpoint.CheckpointedCalls - before;
        var off = Train(longBatches: false);
        Assert.Equal(checkpointed, GradientCheckpoint.CheckpointedCalls - before); // none with the option off

        // 25 micro-batches: the budget is the 24th longest (6 tokens); the 30-token one checkpoints (30 − 6) / 30 = 80% of
        // its layers, ⌈0.8 × 2⌉ = 2 of the fixture's 2; every other micro-batch none.
        Assert.Equal(25, on.Shares.Count);
        Assert.All(on.Shares.Where(s => s.Tokens != 30), s => Assert.Equal(0, s.Share));
        Assert.Equal(0.8, Assert.Single(on.Shares, s => s.Tokens == 30).Share, 12);
        Assert.Equal(2, checkpointed);
        Assert.All(off.Shares, s => Assert.Equal(0, s.Share));

        Assert.Equal(off.History.Count, on.History.Count);
        for (int i = 0; i < on.History.Count; i++)
        {
            Assert.Equal(off.History[i].Loss, on.History[i].Loss, 6);
            Assert.Equal(off.History[i].GradNorm, on.History[i].GradNorm, 6);
        }
    }

    /// <summary>
    /// TrainingOptions.CheckpointedShare (what the pipeline sets where the GPU holds the run with only some layers
    /// recomputed): every micro-batch checkpoints that share, ⌈0.5 × 2⌉ = 1 of the fixture's layers, the long one 90%, both;
    /// the losses those of kept activations.
    /// </summary>
    [Fact]
    public void A_run_share_checkpoints_the_first_layers_of_every_micro_batch()
    {
        long before = GradientCheckpoint.CheckpointedCalls;
        var half = Train(longBatches: true, runShare: 0.5);
        long checkpointed = GradientCheckpoint.CheckpointedCalls - before;
        var kept = Train(longBatches: false);

        Assert.All(half.Shares.Where(s => s.Tokens != 30), s => Assert.Equal(0.5, s.Share));
        Assert.Equal(0.9, Assert.Single(half.Shares, s => s.Tokens == 30).Share, 12);
        Assert.Equal(24 * 1 + 2, checkpointed);
        for (int i = 0; i < kept.History.Count; i++) Assert.Equal(kept.History[i].Loss, half.History[i].Loss, 6);
    }

    /// <summary>
    /// The time estimate's probe trains a few of the run's rows; with the run's rows as <c>BudgetFrom</c> its long micro-batch
    /// checkpoints as the run's would (3 micro-batches alone set no budget).
    /// </summary>
    [Fact]
    public void A_probe_of_a_few_rows_takes_the_runs_budget()
    {
        var probe = Train(longBatches: true, probe: true);
        Assert.Equal(3, probe.Shares.Count);
        Assert.Equal(0.8, Assert.Single(probe.Shares, s => s.Tokens == 30).Share, 12);
        Assert.All(probe.Shares.Where(s => s.Tokens != 30), s => Assert.Equal(0, s.Share));
    }

    /// <summary>The trainable model, with the share the trainer sets before each micro-batch's forward and that micro-batch's tokens.</summary>
    private sealed class SharesRecorded(CausalLmTraining inner) : ITrainableCausalLM
    {
        public List<(long Tokens, double Share)> Shares { get; } = [];
        public nn.Module Module => inner.Module;
        public LoraLinear LmHead => inner.LmHead;
        public bool GradientCheckpointing { get => inner.GradientCheckpointing; set => inner.GradientCheckpointing = value; }
        public double CheckpointedShare { get => inner.CheckpointedShare; set => inner.CheckpointedShare = value; }
        public IEnumerable<(string Name, LoraLinear Layer)> NamedLinears() => inner.NamedLinears();
        public Tensor HiddenStates(Tensor inputIds, Tensor positionIds, Tensor? attentionMask, PackedSequences? packed)
        {
            if (is_grad_enabled()) Shares.Add((inputIds.numel(), inner.CheckpointedShare));
            return inner.HiddenStates(inputIds, positionIds, attentionMask, packed);
        }
    }
}
