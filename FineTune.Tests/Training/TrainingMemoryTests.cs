using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Hub;
using FineTune.Engine.Models;
using FineTune.Engine.Training;
using FineTune.Tests.Adapters;
using FineTune.Tests.Hub;
using FineTune.Tests.Models;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Settings;

namespace FineTune.Tests.Training;

/// <summary>
/// The engine's training-memory estimate, from facts of the model built on the meta device: exact parameter counts from
/// config shapes, and totals against the peaks measured on an H200 (docs/benchmarks.md, nvidia-smi, CUDA context included).
/// </summary>
public sealed class TrainingMemoryTests : IDisposable
{
    public TrainingMemoryTests() => _ = ComputeBackend.Current;

    private readonly string _folder = TestPaths.NewTempFolder("training-memory");

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    /// <summary>A Qwen2 config.json with the published shapes (tools/bench/reference.py's qwen2.5-0.5b and qwen2-7b).</summary>
    private static ModelFacts Qwen2(int hidden, int layers, int intermediate, int heads, int kvHeads, int vocab, bool tied) =>
        ModelFacts.Of(ModelConfig.Parse($$"""
            {"model_type": "qwen2", "hidden_size": {{hidden}}, "num_hidden_layers": {{layers}}, "intermediate_size": {{intermediate}},
             "num_attention_heads": {{heads}}, "num_key_value_heads": {{kvHeads}}, "vocab_size": {{vocab}}, "tie_word_embeddings": {{(tied ? "true" : "false")}},
             "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "max_position_embeddings": 32768, "hidden_act": "silu"}
            """));

    private static ModelFacts Qwen2_0_5B => Qwen2(896, 24, 4864, 14, 2, 151936, tied: true);

    private static ModelFacts Qwen2_7B => Qwen2(3584, 28, 18944, 28, 4, 152064, tied: false);

    [Fact]
    public void Parameter_counts_from_config_shapes_are_the_published_ones()
    {
        // model.num_parameters() of Qwen2-0.5B / Qwen2.5-0.5B and Qwen2-7B / Qwen2.5-7B (q/k/v biases included, tied embeddings once).
        Assert.Equal(494_032_768, Qwen2_0_5B.TotalParameters);
        Assert.Equal(7_615_616_512, Qwen2_7B.TotalParameters);
        // NF4 takes every linear but lm_head; embeddings, lm_head, norms and biases stay 16-bit.
        Assert.Equal(28L * (3584 * 3584 * 2 + 3584 * 512 * 2 + 3 * 3584 * 18944), Qwen2_7B.QuantizableParameters);
    }

    /// <summary>The benchmark's job (TrainBenchCommand.Job): LoRA r 16, alpha 32, dropout 0.05 on q/k/v/o, batch 1 × 512 tokens, NF4 with double quantization.</summary>
    private static MemoryQuery Benchmark(bool checkpointing) =>
        new(new LoraSettings(16, 32, 0.05), BatchSize: 1, MaxSeqLength: 512, FourBit: true, DoubleQuantization: true, GradientCheckpointing: checkpointing);

    [Theory]
    [InlineData("qwen2-7b", true, 7.837)]
    [InlineData("qwen2-7b", false, 9.812)]
    [InlineData("qwen2.5-0.5b", true, 2.292)]
    [InlineData("qwen2.5-0.5b", false, 2.706)]
    public void Qlora_estimates_are_within_5_percent_of_the_peaks_measured_on_an_h200(string model, bool checkpointing, double measuredGiB)
    {
        var facts = model == "qwen2-7b" ? Qwen2_7B : Qwen2_0_5B;
        double estimate = TrainingMemory.Estimate(facts, Benchmark(checkpointing)).Total / (double)(1L << 30);
        Assert.InRange(estimate, measuredGiB * 0.95, measuredGiB * 1.05);
    }

    [Theory]
    [InlineData("qwen2-7b", 9.812 - 7.837)]
    [InlineData("qwen2.5-0.5b", 2.706 - 2.292)]
    public void What_gradient_checkpointing_saves_follows_from_the_layer_widths(string model, double measuredSavingGiB)
    {
        // No calibrated constant takes part in the difference: only the per-token activations of each layer.
        var facts = model == "qwen2-7b" ? Qwen2_7B : Qwen2_0_5B;
        var on = TrainingMemory.Estimate(facts, Benchmark(checkpointing: true));
        var off = TrainingMemory.Estimate(facts, Benchmark(checkpointing: false));
        Assert.True(on.GradientCheckpointing);
        Assert.False(off.GradientCheckpointing);
        Assert.Equal(on.Weights, off.Weights);
        Assert.InRange((off.Total - on.Total) / (double)(1L << 30), measuredSavingGiB * 0.9, measuredSavingGiB * 1.1);
    }

    private const long GiB = 1L << 30;

    private static MemoryQuery Auto(bool fourBit = true) => Benchmark(checkpointing: false) with { FourBit = fourBit, GradientCheckpointing = null };

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void An_explicit_setting_wins_over_the_device_memory(bool set)
    {
        // On where everything fits, off where nothing does: as set, either way.
        var huge = TrainingMemory.ResolveCheckpointing(Qwen2_7B, Benchmark(set), deviceBytes: 1024 * GiB);
        var tiny = TrainingMemory.ResolveCheckpointing(Qwen2_7B, Benchmark(set), deviceBytes: 1 * GiB);
        Assert.Equal(new CheckpointingChoice(set, CheckpointingReason.AsSet), huge);
        Assert.Equal(new CheckpointingChoice(set, CheckpointingReason.AsSet), tiny);
        Assert.Equal(set, TrainingMemory.Estimate(Qwen2_7B, Benchmark(set), 1 * GiB).GradientCheckpointing);
    }

    [Fact]
    public void Auto_is_off_when_the_run_fits_the_usable_share_of_the_gpu_without_it_and_on_when_it_does_not()
    {
        long without = TrainingMemory.Estimate(Qwen2_7B, Benchmark(checkpointing: false)).Total;
        long with = TrainingMemory.Estimate(Qwen2_7B, Benchmark(checkpointing: true)).Total;
        // The smallest GPU whose usable share holds the run without checkpointing, and one byte less.
        long enough = (long)Math.Ceiling(without / TrainingMemory.UsableShare);
        Assert.True(with < enough - 1, "the checkpointed run fits the smaller GPU: only then is on the choice that helps");

        var off = TrainingMemory.ResolveCheckpointing(Qwen2_7B, Auto(), enough);
        Assert.Equal(new CheckpointingChoice(false, CheckpointingReason.FitsWithout, without, enough), off);
        // One byte less: the first layer recomputed is enough (it keeps its input instead of its activations).
        var one = TrainingMemory.ResolveCheckpointing(Qwen2_7B, Auto(), enough - 1);
        Assert.Equal(new CheckpointingChoice(false, CheckpointingReason.SomeLayers, without, enough - 1, 1, 28), one);
        // A GPU that holds the run with every layer recomputed and not with one layer fewer: on.
        var on = TrainingMemory.ResolveCheckpointing(Qwen2_7B, Auto(), with);
        Assert.Equal(new CheckpointingChoice(true, CheckpointingReason.TooBigWithout, without, with), on);
        // An H200 holds a 7B QLoRA run at 1 x 512 many times over: no recomputing there.
        Assert.False(TrainingMemory.ResolveCheckpointing(Qwen2_7B, Auto(), 141 * GiB).On);
        // A 16-bit run that only fits with checkpointing gets it too.
        long sixteenBitWith = TrainingMemory.Estimate(Qwen2_7B, Benchmark(true) with { FourBit = false }).Total;
        Assert.True(TrainingMemory.ResolveCheckpointing(Qwen2_7B, Auto(fourBit: false), sixteenBitWith + GiB / 100).On);
    }

    /// <summary>
    /// Between the two, auto recomputes the fewest first layers with which the run fits: a 7B QLoRA run of 8 x 512 tokens
    /// on GPUs of 16 to 24 GiB. The estimate counts them (their inputs instead of their activations), fits the usable share,
    /// and one layer fewer would not: a GPU just below that estimate gets one layer more.
    /// </summary>
    [Theory]
    [InlineData(16)]
    [InlineData(20)]
    [InlineData(24)]
    public void Auto_recomputes_the_fewest_first_layers_with_which_the_run_fits(int gpuGiB)
    {
        var query = Auto() with { BatchSize = 8 };
        long device = gpuGiB * GiB;
        var estimate = TrainingMemory.Estimate(Qwen2_7B, query, device);
        var choice = estimate.Checkpointing;
        Assert.Equal(CheckpointingReason.SomeLayers, choice.Reason);
        Assert.False(choice.On);
        Assert.Equal(28, choice.OfLayers);
        int k = choice.Layers!.Value;
        Assert.InRange(k, 1, 27);
        Assert.Equal(k / 28.0, choice.Share, 12);
        Assert.True(choice.BytesWithout > device * TrainingMemory.UsableShare);
        Assert.True(estimate.Total <= device * TrainingMemory.UsableShare, $"{k} layers: {estimate.Total} bytes on a {gpuGiB} GiB GPU");
        // The GPU that holds exactly this estimate keeps k; one byte less of usable memory takes k + 1.
        long exact = (long)Math.Ceiling(estimate.Total / TrainingMemory.UsableShare);
        Assert.Equal(k, TrainingMemory.ResolveCheckpointing(Qwen2_7B, query, exact).Layers);
        Assert.Equal(k + 1, TrainingMemory.ResolveCheckpointing(Qwen2_7B, query, exact - 2).Layers);
        // Fewer layers than with every one recomputed: less recomputing, the steps faster; more memory than that.
        var all = TrainingMemory.Estimate(Qwen2_7B, query with { GradientCheckpointing = true });
        Assert.True(estimate.Total > all.Total);
        Assert.StartsWith($"gradient checkpointing on for the first {k} of 28 layers: without it the run would need about", choice.ToString(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Auto_with_the_device_memory_or_the_facts_unknown_is_on_with_a_4_bit_base_only(bool fourBit)
    {
        var expected = new CheckpointingChoice(fourBit, CheckpointingReason.DeviceUnknown);
        Assert.Equal(expected, TrainingMemory.ResolveCheckpointing(Qwen2_7B, Auto(fourBit), deviceBytes: null));
        Assert.Equal(expected, TrainingMemory.ResolveCheckpointing(facts: null, Auto(fourBit), deviceBytes: 141 * GiB));
        Assert.Equal(expected, TrainingMemory.Estimate(Qwen2_7B, Auto(fourBit)).Checkpointing);
    }

    [Fact]
    public void The_estimate_reports_and_counts_the_resolved_choice()
    {
        var without = TrainingMemory.Estimate(Qwen2_7B, Benchmark(checkpointing: false));
        var with = TrainingMemory.Estimate(Qwen2_7B, Benchmark(checkpointing: true));

        var onH200 = TrainingMemory.Estimate(Qwen2_7B, Auto(), 141 * GiB);
        Assert.False(onH200.GradientCheckpointing);
        Assert.Equal(CheckpointingReason.FitsWithout, onH200.Checkpointing.Reason);
        Assert.Equal(without.Total, onH200.Total);

        var onTenGiB = TrainingMemory.Estimate(Qwen2_7B, Auto(), 10 * GiB); // 9.8 GiB without: more than 90% of 10
        Assert.False(onTenGiB.GradientCheckpointing);
        Assert.Equal(CheckpointingReason.SomeLayers, onTenGiB.Checkpointing.Reason);
        Assert.InRange(onTenGiB.Total, with.Total, (long)(10 * GiB * TrainingMemory.UsableShare));
        Assert.Equal(without.Total, onTenGiB.Checkpointing.BytesWithout);

        var onlyWithAll = TrainingMemory.Estimate(Qwen2_7B, Auto(), with.Total); // holds it with every layer recomputed, at 100%
        Assert.True(onlyWithAll.GradientCheckpointing);
        Assert.Equal(CheckpointingReason.TooBigWithout, onlyWithAll.Checkpointing.Reason);
        Assert.Equal(with.Total, onlyWithAll.Total);
    }

    [Fact]
    public void The_choice_says_in_one_line_what_was_chosen_and_why()
    {
        var off = TrainingMemory.ResolveCheckpointing(Qwen2_7B, Auto(), 140 * GiB).ToString();
        Assert.Matches(@"^gradient checkpointing off: the run needs about \d+\.\d GiB of the GPU's 140\.0 GiB$", off);
        var some = TrainingMemory.ResolveCheckpointing(Qwen2_7B, Auto(), 10 * GiB).ToString();
        Assert.Matches(@"^gradient checkpointing on for the first \d+ of 28 layers: without it the run would need about \d+\.\d GiB, more than 90% of the GPU's 10\.0 GiB$", some);
        var on = TrainingMemory.ResolveCheckpointing(Qwen2_7B, Auto(), 8 * GiB).ToString();
        Assert.Matches(@"^gradient checkpointing on: without it the run would need about \d+\.\d GiB, more than 90% of the GPU's 8\.0 GiB$", on);
        Assert.Equal("gradient checkpointing on: as set", TrainingMemory.ResolveCheckpointing(Qwen2_7B, Benchmark(true), null).ToString());
    }

    [Fact]
    public void Trainable_parameters_and_optimizer_states_are_peft_s_counts()
    {
        // PEFT print_trainable_parameters for r=16 on q/k/v/o of Qwen2.5-0.5B: 2,162,688.
        var estimate = TrainingMemory.Estimate(Qwen2_0_5B, new MemoryQuery(new LoraSettings(16, 32, 0.05), 1, 512, FourBit: false));
        Assert.Equal(2_162_688, estimate.TrainableParameters);
        Assert.Equal(2_162_688L * 8, estimate.Adapter);          // fp32 weights and gradients
        Assert.Equal(2_162_688L * 8, estimate.OptimizerStates);  // AdamW's two moments in fp32
        Assert.False(estimate.GradientCheckpointing);            // the trainer's default: on only for a 4-bit base
        Assert.Equal(Qwen2_0_5B.TotalParameters * 2, estimate.Weights);
        Assert.Equal(Qwen2_0_5B.TotalParameters * 4, TrainingMemory.Estimate(Qwen2_0_5B, new MemoryQuery(new LoraSettings(), 1, 512, false, ComputeBytes: 4)).Weights);
        // Without double quantization each block of 64 keeps an fp32 absmax: 0.5625 bytes a weight instead of ~0.516.
        Assert.Equal(0.5625, TrainingMemory.Nf4BytesPerWeight(doubleQuantization: false));
        Assert.InRange(TrainingMemory.Nf4BytesPerWeight(doubleQuantization: true), 0.5158, 0.5159);
    }

    [Fact]
    public void Longer_rows_and_bigger_batches_need_more_activation_memory()
    {
        var facts = Qwen2_0_5B;
        long At(int batch, int length) => TrainingMemory.Estimate(facts, new MemoryQuery(new LoraSettings(), batch, length, FourBit: true)).Activations;
        Assert.True(At(1, 1024) > At(1, 512));
        Assert.True(At(4, 512) > At(1, 512));
        Assert.Equal(At(2, 512), At(1, 1024)); // the same tokens, chunked loss of at most TrainingOptions.DefaultLossChunkSize tokens either way
    }

    [Fact]
    public void The_presets_facts_come_from_their_config_json_with_the_published_counts()
    {
        foreach (var (id, published) in new[]
                 {
                     ("Qwen/Qwen2.5-0.5B-Instruct", 494_032_768L), ("Qwen/Qwen2.5-1.5B-Instruct", 1_543_714_304L),
                     ("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512L), ("meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248L),
                 })
        {
            var facts = ModelCatalog.FactsOf(new TrainingSettings { Source = ModelSource.Preset, Model = id }, EmptyCache())!;
            Assert.Equal(published, facts.TotalParameters);
            Assert.Equal(ModelCatalog.Find(id)!.Family, facts.Family);
        }
    }

    private HubOptions EmptyCache() => new() { Endpoint = "http://127.0.0.1:9", Token = null, CacheFolder = Path.Combine(_folder, "empty-cache"), Offline = true };

    [Fact]
    public async Task A_hub_model_not_downloaded_gets_its_facts_from_its_config_json_alone()
    {
        string fixture = ModelFixtures.Folder("qwen3");
        await using var hub = await FakeHub.StartAsync(h =>
        {
            h.Files["config.json"] = File.ReadAllBytes(Path.Combine(fixture, "config.json"));
            h.Files["tokenizer.json"] = File.ReadAllBytes(Path.Combine(fixture, "tokenizer.json"));
            h.Files["model.safetensors"] = File.ReadAllBytes(Path.Combine(fixture, "model.safetensors"));
        });
        string cache = Path.Combine(_folder, "hf-cache");
        var options = new HubOptions { Endpoint = hub.Endpoint, Token = null, CacheFolder = cache, Retries = 0, RetryDelay = TimeSpan.Zero };
        var settings = new TrainingSettings { Source = ModelSource.Hub, Model = hub.ModelId };
        Assert.Null(ModelCatalog.FactsOf(settings, options));

        using var http = new HttpClient();
        string snapshot = await new HubDownloader(http, options).DownloadConfigAsync(hub.ModelId);

        // Only config.json came down: no weights, no tokenizer, and the snapshot is not taken for a loadable model.
        Assert.Equal(["config.json"], Directory.GetFiles(snapshot).Select(Path.GetFileName));
        Assert.Equal(0, hub.CountRequests("model.safetensors"));
        var facts = ModelCatalog.FactsOf(settings, options with { Offline = true })!;
        Assert.Equal(ModelFacts.Of(fixture).TotalParameters, facts.TotalParameters);
        Assert.Equal(ModelFacts.Of(fixture).LinearNames, facts.LinearNames);
        // Asked again, even offline, it is the cached file.
        Assert.Equal(snapshot, await new HubDownloader(http, options with { Offline = true }).DownloadConfigAsync(hub.ModelId));
    }
}
