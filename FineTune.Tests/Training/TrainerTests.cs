using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Models;
using FineTune.Engine.Training;
using FineTune.Tests.Adapters;
using static TorchSharp.torch;

namespace FineTune.Tests.Training;

public class TrainerTests
{
    public TrainerTests() => _ = ComputeBackend.Current;

    private static readonly LoraSettings Settings = new(Rank: 4, Alpha: 8, Dropout: 0.05, TargetModules: ["q_proj", "k_proj", "v_proj", "o_proj"]);

    /// <summary>Rows "prompt tokens → answer tokens" where the answer is a fixed function of the prompt.</summary>
    internal static List<TrainingExample> SyntheticRows(int count, int seed = 5)
    {
        var random = new Random(seed);
        var rows = new List<TrainingExample>();
        for (int i = 0; i < count; i++)
        {
            int a = random.Next(1, 30), b = random.Next(1, 30);
            int[] prompt = [a, b, 60];
            int[] answer = [(a + b) % 30 + 30, a, 63];
            int[] ids = [.. prompt, .. answer];
            var targets = new int[ids.Length];
            for (int t = 0; t < ids.Length; t++) targets[t] = t + 1 < ids.Length && t + 1 >= prompt.Length ? ids[t + 1] : -100;
            rows.Add(new TrainingExample(ids, targets, i + 1));
        }
        return rows;
    }

    private static TinyCausalLM ModelWithLora(LoraSettings? settings = null)
    {
        var model = new TinyCausalLM();
        LoraInjector.Attach(model.NamedLinears(), settings ?? Settings, seed: 1);
        return model;
    }

    [Theory]
    [InlineData(5, 1, 4, 3, 6)]      // tutorial: ceil(5/1)=5 batches, ceil(5/4)=2 steps/epoch
    [InlineData(100, 8, 4, 1, 4)]    // 13 batches → ceil(13/4)=4
    [InlineData(3, 4, 4, 2, 2)]      // fewer batches than accumulation: 1 step per epoch
    [InlineData(10, 2, 1, 1.5, 8)]   // fractional epochs: ceil(1.5 × 5)
    public void Step_count_equals_hf_trainer(int rows, int batch, int accumulation, double epochs, int expected)
    {
        var options = new TrainingOptions { BatchSize = batch, GradientAccumulationSteps = accumulation, Epochs = epochs };
        Assert.Equal(expected, options.TotalSteps(rows));
    }

    [Fact]
    public void Schedules_follow_hf_lambdas()
    {
        var linear = new LearningRateSchedule(LearningRateScheduleKind.Linear, warmupSteps: 2, totalSteps: 10);
        Assert.Equal([0.0, 0.5, 1.0, 7 / 8.0, 0.0], new[] { 0, 1, 2, 3, 10 }.Select(linear.Factor));
        var cosine = new LearningRateSchedule(LearningRateScheduleKind.Cosine, warmupSteps: 0, totalSteps: 10);
        Assert.Equal(1.0, cosine.Factor(0), 12);
        Assert.Equal(0.5, cosine.Factor(5), 12);
        Assert.Equal(0.0, cosine.Factor(10), 12);
        var options = new TrainingOptions { WarmupRatio = 0.1 };
        Assert.Equal(2, options.WarmupStepCount(11)); // ceil(1.1)
    }

    [Fact]
    public void Evaluation_batches_rows_of_near_length_and_gives_the_loss_of_each_row_alone()
    {
        using var model = ModelWithLora();
        // Rows of 3 to 6 tokens (the synthetic rows cut short), in an order that mixes the lengths.
        var rows = SyntheticRows(12).Select((r, i) =>
        {
            int length = 3 + i % 4;
            return new TrainingExample(r.InputIds[..length], [.. r.Targets[..(length - 1)], -100], r.SourceRow);
        }).ToList();
        var batched = new TrainingOptions { BatchSize = 3 };

        var batches = LoraTrainer.EvaluationBatches(rows, batched).ToList();
        Assert.Equal(Enumerable.Range(0, 12), batches.SelectMany(b => b).Order());
        Assert.All(batches, b => Assert.Single(b.Select(i => rows[i].Length).Distinct())); // 3 rows of each length: one length a batch
        Assert.Equal(6, rows[batches[0][0]].Length);                                        // longest first

        var trainer = new LoraTrainer(model, Settings, "tiny");
        double together = trainer.Evaluate(rows, batched, CPU);
        double alone = trainer.Evaluate(rows, new TrainingOptions { BatchSize = 1 }, CPU);
        Assert.Equal(alone, together, 1e-5);
        // Batches of mixed lengths (padded to their longest row: 6 6 6 5, 5 5 4 4, 4 3 3 3) give the same loss.
        double mixed = trainer.Evaluate(rows, new TrainingOptions { BatchSize = 4 }, CPU);
        Assert.Equal(alone, mixed, 1e-5);
    }

    [Fact]
    public void A_micro_batch_padded_to_a_bucket_gives_the_loss_and_adapter_gradients_of_the_plain_one()
    {
        // LoRA B starts at zero (PEFT's init), which would leave A without a gradient: give B values first.
        using var model = ModelWithLora();
        using (no_grad())
            foreach (var (_, layer) in model.NamedLinears().Where(l => l.Layer.HasAdapter)) layer.lora_B!.weight!.normal_(0, 0.1);
        model.eval(); // no dropout: both passes see the same function
        var rows = SyntheticRows(5);
        var trainer = new LoraTrainer(model, Settings, "tiny");
        var adapters = model.parameters().Where(p => p.requires_grad).ToList();
        (float Loss, float[] Gradients) Run(bool padded)
        {
            using var scope = NewDisposeScope();
            foreach (var p in adapters) p.grad?.zero_();
            using var batch = Batching.Collate(rows, [0, 1, 2, 3, 4], BatchLayout.Packed, CPU, padToBucket: padded);
            var hidden = model.HiddenStates(batch.InputIds, batch.PositionIds, batch.AttentionMask, batch.Packed);
            var loss = trainer.LossSum(hidden, batch, chunkSize: 4);
            loss.backward();
            return (loss.item<float>(), [.. adapters.SelectMany(p => p.grad!.data<float>().ToArray())]);
        }
        var plain = Run(padded: false);
        var padded = Run(padded: true);
        Assert.Contains(plain.Gradients, g => g != 0);
        Assert.Equal(plain.Loss, padded.Loss, 1e-5);
        float largest = plain.Gradients.Max(MathF.Abs);
        Assert.All(plain.Gradients.Zip(padded.Gradients), pair => Assert.True(MathF.Abs(pair.First - pair.Second) <= 1e-5f * largest, $"{pair.First} vs {pair.Second}"));
    }

    [Theory]
    [InlineData(false, 4)]
    [InlineData(true, 4)]
    [InlineData(true, 256)]
    public void The_loss_gradient_made_in_forward_is_the_plain_graphs_bit_for_bit(bool padded, int chunkSize)
    {
        using var model = ModelWithLora();
        using (no_grad())
            foreach (var (_, layer) in model.NamedLinears().Where(l => l.Layer.HasAdapter)) layer.lora_B!.weight!.normal_(0, 0.1);
        model.eval();
        var rows = SyntheticRows(5);
        var trainer = new LoraTrainer(model, Settings, "tiny");
        var adapters = model.parameters().Where(p => p.requires_grad).ToList();
        using var divisor = tensor(7f);
        using var scale = tensor(1024f);
        (float Loss, float[] Gradients) Run(bool inForward)
        {
            using var scope = NewDisposeScope();
            foreach (var p in adapters) p.grad?.zero_();
            using var batch = Batching.Collate(rows, [0, 1, 2, 3, 4], BatchLayout.Packed, CPU, padToBucket: padded);
            var hidden = model.HiddenStates(batch.InputIds, batch.PositionIds, batch.AttentionMask, batch.Packed);
            // As the trainer's step with fp16 loss scaling: (sum / targets) · scale.
            var upstream = inForward ? scale / divisor : null;
            var loss = trainer.LossSum(hidden, batch, chunkSize, upstream) / divisor;
            (loss * scale).backward();
            return (loss.item<float>(), [.. adapters.SelectMany(p => p.grad!.data<float>().ToArray())]);
        }
        var plain = Run(inForward: false);
        var fused = Run(inForward: true);
        Assert.Contains(plain.Gradients, g => g != 0);
        Assert.Equal(plain.Loss, fused.Loss);
        Assert.Equal(plain.Gradients, fused.Gradients);
    }

    [Fact]
    public void Training_lowers_the_loss_changes_only_the_adapters_and_reports_progress()
    {
        using var model = ModelWithLora();
        var baseWeight = model.model.layers[0].self_attn.q_proj.weight!.clone();
        var lmHead = model.lm_head.weight!.clone();
        var rows = SyntheticRows(24);
        var data = new DataSplit(rows, []);
        var events = new List<TrainingProgress>();
        var trainer = new LoraTrainer(model, Settings, "tiny");
        var options = new TrainingOptions { Epochs = 8, LearningRate = 1e-2, BatchSize = 4, GradientAccumulationSteps = 1, LoggingSteps = 2 };

        double before = trainer.Evaluate(rows, options, CPU);
        var result = trainer.Train(data, options, new SyncProgress<TrainingProgress>(events.Add));
        double after = trainer.Evaluate(rows, options, CPU);

        Assert.True(result.Completed);
        Assert.Equal(48, result.TotalSteps);
        Assert.Equal(48, result.History.Count);
        Assert.True(after < before * 0.8, $"loss {before} → {after}");
        Assert.Equal(0, (model.model.layers[0].self_attn.q_proj.weight! - baseWeight).abs().max().item<float>());
        Assert.Equal(0, (model.lm_head.weight! - lmHead).abs().max().item<float>());
        Assert.True(model.model.layers[0].self_attn.q_proj.lora_B!.weight!.abs().max().item<float>() > 0);

        Assert.Equal(24, events.Count);
        Assert.Equal(new[] { 2, 4, 6 }, events.Take(3).Select(e => e.Step));
        var last = events[^1];
        Assert.Equal(48, last.Step);
        Assert.Equal(48, last.TotalSteps);
        Assert.Equal(8.0, last.Epoch, 6);
        Assert.True(last.TokensPerSecond > 0);
        Assert.True(double.IsFinite(last.GradNorm!.Value) && last.GradNorm > 0);
        Assert.Equal(1e-2 / 48, last.LearningRate!.Value, 12); // the last step of a linear schedule runs at 1/48 of the peak
        Assert.Null(last.GpuMemoryBytes);
    }

    /// <summary>One definition of "the loss": the final loss (history page, model card) is the last logged value the train page shows.</summary>
    [Fact]
    public void The_final_loss_is_the_last_logged_mean_not_the_last_steps_alone()
    {
        using var model = ModelWithLora();
        var rows = SyntheticRows(12);
        var events = new List<TrainingProgress>();
        var options = new TrainingOptions { Epochs = 1, LearningRate = 1e-2, BatchSize = 2, GradientAccumulationSteps = 1, LoggingSteps = 4 };

        var result = new LoraTrainer(model, Settings, "tiny").Train(new DataSplit(rows, []), options, new SyncProgress<TrainingProgress>(events.Add));

        // 6 steps logged at 4 and 6: the last logged loss is the mean of steps 5 and 6.
        Assert.Equal(new[] { 4, 6 }, events.Select(e => e.Step));
        double lastLogged = (result.History[4].Loss + result.History[5].Loss) / 2;
        Assert.Equal(lastLogged, events[^1].Loss!.Value, 12);
        Assert.Equal(lastLogged, result.FinalTrainLoss!.Value, 12);
        Assert.NotEqual(result.History[5].Loss, result.FinalTrainLoss!.Value);
    }

    [Fact]
    public void Resume_from_a_checkpoint_continues_the_same_loss_curve()
    {
        var rows = SyntheticRows(20);
        var data = new DataSplit(rows, []);
        var options = new TrainingOptions { Epochs = 2, LearningRate = 3e-3, BatchSize = 2, GradientAccumulationSteps = 2, WarmupSteps = 2, SaveSteps = 3, SaveTotalLimit = 2 };
        string folder = TestPaths.NewTempFolder("resume");
        try
        {
            TrainingResult straight;
            using (var model = ModelWithLora())
                straight = new LoraTrainer(model, Settings, "tiny").Train(data, options);

            string checkpoints = Path.Combine(folder, "checkpoints");
            using (var model = ModelWithLora())
            {
                var crashed = new LoraTrainer(model, Settings, "tiny").Train(data, options with { StopAfterSteps = 6 }, checkpointsFolder: checkpoints);
                Assert.False(crashed.Completed);
            }
            string latest = Checkpoints.Latest(checkpoints)!;
            Assert.EndsWith("checkpoint-6", latest);
            Assert.True(File.Exists(Path.Combine(latest, PeftAdapter.WeightsFile)));
            Assert.True(File.Exists(Path.Combine(latest, Checkpoints.OptimizerFile)));

            TrainingResult resumed;
            using (var model = ModelWithLora(Settings with { }))
                resumed = new LoraTrainer(model, Settings, "tiny").Train(data, options, checkpointsFolder: checkpoints, resumeFrom: latest);

            Assert.Equal(straight.History.Count, resumed.History.Count);
            for (int i = 0; i < straight.History.Count; i++)
            {
                Assert.Equal(straight.History[i].Loss, resumed.History[i].Loss, 5);
                Assert.Equal(straight.History[i].LearningRate, resumed.History[i].LearningRate, 12);
            }
            // save_total_limit 2: only the two newest checkpoints stay (9 and the final 10)
            var kept = Directory.GetDirectories(checkpoints).Select(Path.GetFileName).Order().ToList();
            Assert.Equal(["checkpoint-10", "checkpoint-9"], kept);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void Resume_with_other_settings_is_refused_with_a_clear_message()
    {
        var rows = SyntheticRows(8);
        string folder = TestPaths.NewTempFolder("resume-bad");
        try
        {
            var options = new TrainingOptions { Epochs = 1, BatchSize = 2, GradientAccumulationSteps = 1, SaveSteps = 2 };
            using (var model = ModelWithLora())
                new LoraTrainer(model, Settings, "tiny").Train(new DataSplit(rows, []), options, checkpointsFolder: folder);
            using var again = ModelWithLora();
            var e = Assert.Throws<CheckpointException>(() => new LoraTrainer(again, Settings, "tiny")
                .Train(new DataSplit(rows, []), options with { BatchSize = 4 }, resumeFrom: Checkpoints.Latest(folder)));
            Assert.Contains("batch 2", e.Message);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void Cancellation_stops_the_run_and_leaves_the_model_usable()
    {
        using var model = ModelWithLora();
        var rows = SyntheticRows(16);
        using var cancel = new CancellationTokenSource();
        var trainer = new LoraTrainer(model, Settings, "tiny");
        var options = new TrainingOptions { Epochs = 10, BatchSize = 2, GradientAccumulationSteps = 1 };
        Assert.ThrowsAny<OperationCanceledException>(() => trainer.Train(new DataSplit(rows, []), options,
            new SyncProgress<TrainingProgress>(p => { if (p.Step == 3) cancel.Cancel(); }), cancel.Token));
        Assert.False(model.training);
        Assert.True(double.IsFinite(trainer.Evaluate(rows, options, CPU)));
    }

    [Fact]
    public void Validation_loss_is_reported_at_each_epoch_end()
    {
        using var model = ModelWithLora();
        var rows = SyntheticRows(30);
        var split = Batching.Split(rows, seed: 42);
        var events = new List<TrainingProgress>();
        var result = new LoraTrainer(model, Settings, "tiny").Train(split,
            new TrainingOptions { Epochs = 2, BatchSize = 3, GradientAccumulationSteps = 3, LoggingSteps = 100 },
            new SyncProgress<TrainingProgress>(events.Add));
        Assert.Equal(2, events.Count(e => e.EvalLoss is not null));
        Assert.NotNull(result.FinalEvalLoss);
        Assert.Equal(6, result.TotalSteps); // 27 rows / 3 = 9 batches → 3 steps/epoch
    }

    [Fact]
    public void Out_of_memory_errors_are_recognised()
    {
        Assert.True(LoraTrainer.IsOutOfMemory(new System.Runtime.InteropServices.ExternalException("CUDA out of memory. Tried to allocate 2.00 GiB")));
        Assert.True(LoraTrainer.IsOutOfMemory(new OutOfMemoryException()));
        Assert.False(LoraTrainer.IsOutOfMemory(new InvalidOperationException("shape mismatch")));
        var typed = new TrainingOutOfMemoryException("a training step", new OutOfMemoryException());
        Assert.Contains("smaller batch size", typed.Message);
        Assert.Contains("4-bit", typed.Message);
    }

    /// <summary>A model whose forward asks libtorch for an impossible amount of memory (a real allocator failure).</summary>
    private sealed class GreedyForMemory(TinyCausalLM inner) : ITrainableCausalLM
    {
        public bool Fail { get; set; } = true;
        public nn.Module Module => inner;
        public LoraLinear LmHead => inner.LmHead;
        public bool GradientCheckpointing { get => inner.GradientCheckpointing; set => inner.GradientCheckpointing = value; }
        public IEnumerable<(string Name, LoraLinear Layer)> NamedLinears() => inner.NamedLinears();
        public Tensor HiddenStates(Tensor inputIds, Tensor positionIds, Tensor? attentionMask, PackedSequences? packed)
        {
            if (Fail) using (var huge = empty(1L << 45)) { }
            return inner.HiddenStates(inputIds, positionIds, attentionMask, packed);
        }
    }

    [Fact]
    public void Out_of_memory_in_a_step_is_a_typed_error_and_training_works_afterwards()
    {
        using var inner = ModelWithLora();
        var model = new GreedyForMemory(inner);
        var trainer = new LoraTrainer(model, Settings, "tiny");
        var data = new DataSplit(SyntheticRows(8), []);
        var options = new TrainingOptions { Epochs = 1, BatchSize = 2, GradientAccumulationSteps = 1 };
        var e = Assert.Throws<TrainingOutOfMemoryException>(() => trainer.Train(data, options));
        Assert.Contains("smaller batch size", e.Message);
        Assert.False(inner.training);
        model.Fail = false;
        var result = trainer.Train(data, options);
        Assert.True(result.Completed);
        Assert.All(result.History, h => Assert.True(double.IsFinite(h.Loss)));
    }

    [Fact]
    public void Loss_scaling_leaves_an_fp32_run_unchanged()
    {
        // Scaling by 2^16 and dividing back is exact in fp32, so the scaled run must match step for step.
        var rows = SyntheticRows(16);
        var options = new TrainingOptions { Epochs = 2, LearningRate = 5e-3, BatchSize = 2, GradientAccumulationSteps = 2 };
        TrainingResult plain, scaled;
        using (var model = ModelWithLora()) plain = new LoraTrainer(model, Settings, "tiny").Train(new DataSplit(rows, []), options);
        using (var model = ModelWithLora()) scaled = new LoraTrainer(model, Settings, "tiny").Train(new DataSplit(rows, []), options with { UseLossScaling = true });
        Assert.Equal(plain.History.Select(h => h.Loss), scaled.History.Select(h => h.Loss));
        Assert.Equal(plain.History.Select(h => h.GradNorm), scaled.History.Select(h => h.GradNorm));
    }

    /// <summary>A model whose hidden states (and so loss and gradients) become NaN while <see cref="Poison"/> is set.</summary>
    private sealed class NaNGradients(TinyCausalLM inner) : ITrainableCausalLM
    {
        public bool Poison { get; set; } = true;
        public nn.Module Module => inner;
        public LoraLinear LmHead => inner.LmHead;
        public bool GradientCheckpointing { get => inner.GradientCheckpointing; set => inner.GradientCheckpointing = value; }
        public IEnumerable<(string Name, LoraLinear Layer)> NamedLinears() => inner.NamedLinears();
        public Tensor HiddenStates(Tensor inputIds, Tensor positionIds, Tensor? attentionMask, PackedSequences? packed)
        {
            var h = inner.HiddenStates(inputIds, positionIds, attentionMask, packed);
            return Poison ? h * float.NaN : h;
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void Steps_with_non_finite_gradients_are_skipped_and_lower_the_loss_scale(bool lossScaling)
    {
        using var inner = ModelWithLora();
        var model = new NaNGradients(inner);
        var loraB = inner.model.layers[0].self_attn.q_proj.lora_B!.weight!;
        var rows = SyntheticRows(8);
        string folder = TestPaths.NewTempFolder("nan-steps");
        try
        {
            // Move lora_B off zero first, so a skipped step would show if it were taken.
            model.Poison = false;
            var options = new TrainingOptions { Epochs = 1, LearningRate = 1e-2, BatchSize = 2, GradientAccumulationSteps = 1, UseLossScaling = lossScaling, SaveSteps = 4 };
            new LoraTrainer(model, Settings, "tiny").Train(new DataSplit(rows, []), options);
            var before = loraB.clone();
            Assert.True(before.abs().max().item<float>() > 0);

            model.Poison = true;
            var result = new LoraTrainer(model, Settings, "tiny").Train(new DataSplit(rows, []), options, checkpointsFolder: folder);
            Assert.All(result.History, h => Assert.True(double.IsNaN(h.GradNorm)));
            Assert.Equal(0, (loraB - before).abs().max().item<float>());
            double? scale = Checkpoints.ReadState(Checkpoints.Latest(folder)!).LossScale;
            if (lossScaling) Assert.Equal(65536.0 / 16, scale); // halved at each of the 4 steps
            else Assert.Null(scale);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void A_training_step_leaves_no_tensors_behind()
    {
        using var model = ModelWithLora();
        var rows = SyntheticRows(8);
        var trainer = new LoraTrainer(model, Settings, "tiny");
        var options = new TrainingOptions { Epochs = 1, BatchSize = 2, GradientAccumulationSteps = 2 };
        trainer.Train(new DataSplit(rows, []), options); // warm-up: optimizer state, caches
        long before = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        trainer.Train(new DataSplit(rows, []), options);
        long after = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        Assert.True(after - before <= 2, $"{after - before} tensors leaked");
    }
}

public class FixtureModelTrainerTests
{
    public FixtureModelTrainerTests() => _ = ComputeBackend.Current;

    [Fact]
    public void Qlora_steps_on_a_fixture_model_lower_the_loss_and_leave_no_tensors_behind()
    {
        string folder = TestPaths.InRepo("FineTune.Tests", "Fixtures", "models", "qwen2");
        using var lm = FineTune.Engine.Models.ModelLoader.Load(folder, new FineTune.Engine.Models.ModelLoadOptions
        {
            DType = ScalarType.Float32,
            LoadLinearWeight = (name, layer, weight) =>
            {
                if (name == "lm_head") return false;
                layer.QuantizeWeight(weight, ScalarType.Float32);
                return true;
            },
        });
        Assert.All(lm.NamedLinears().Where(l => l.Name != "lm_head"), l => Assert.True(l.Layer.IsQuantized));
        var model = new CausalLmTraining(lm);
        var settings = new LoraSettings(Rank: 8, Alpha: 16, Dropout: 0.05);
        LoraInjector.Attach(model.NamedLinears(), settings, seed: 3);
        var rows = TrainerTests.SyntheticRows(12);
        var trainer = new LoraTrainer(model, settings, folder);
        var options = new TrainingOptions { Epochs = 3, LearningRate = 5e-3, BatchSize = 3, GradientAccumulationSteps = 2 };
        double before = trainer.Evaluate(rows, options, CPU);
        trainer.Train(new DataSplit(rows, []), options);
        Assert.True(lm.GradientCheckpointing, "a 4-bit base trains with gradient checkpointing unless told otherwise");
        long live = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        trainer.Train(new DataSplit(rows, []), options);
        long leaked = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount - live;
        double after = trainer.Evaluate(rows, options, CPU);
        Assert.True(leaked <= 2, $"{leaked} tensors leaked");
        Assert.True(after < before, $"loss {before} → {after}");
        Assert.All(lm.NamedLinears().Where(l => l.Name != "lm_head"), l => Assert.True(l.Layer.IsQuantized));
    }
}

/// <summary>IProgress that calls back on the reporting thread (Progress&lt;T&gt; posts to the thread pool).</summary>
internal sealed class SyncProgress<T>(Action<T> report) : IProgress<T>
{
    public void Report(T value) => report(value);
}
