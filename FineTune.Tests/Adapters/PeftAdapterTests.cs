using System.Text.Json.Nodes;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Models;
using FineTune.Tests.Training;
using static TorchSharp.torch;

namespace FineTune.Tests.Adapters;

public class PeftAdapterTests
{
    public PeftAdapterTests() => _ = ComputeBackend.Current;

    [Fact]
    public void Attach_selects_layers_by_suffix_like_peft()
    {
        using var model = new TinyCausalLM(layers: 2);
        var names = LoraInjector.Attach(model.NamedLinears(), new LoraSettings(Rank: 2, Alpha: 4, TargetModules: ["q_proj", "down_proj"]));
        Assert.Equal(["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj", "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"], names.ToList());
        Assert.False(model.model.layers[0].self_attn.k_proj.HasAdapter);
        Assert.True(LoraInjector.Matches("model.layers.0.self_attn.q_proj", "self_attn.q_proj"));
        Assert.False(LoraInjector.Matches("model.layers.0.self_attn.xq_proj", "q_proj"));
        // 2 layers × (q: 32→32, down: 64→32) with r=2: A + B parameters only
        long trainable = model.parameters().Where(p => p.requires_grad).Sum(p => p.numel());
        Assert.Equal(2 * ((2 * 32 + 32 * 2) + (2 * 64 + 32 * 2)), trainable);
    }

    [Fact]
    public void Unknown_targets_name_the_model_layers_and_suggest_qwen_v1_names()
    {
        using var model = new TinyCausalLM();
        var e = Assert.Throws<LoraTargetNotFoundException>(() => LoraInjector.Attach(model.NamedLinears(), new LoraSettings(TargetModules: ["q_proj", "gate_proj"])));
        Assert.Equal(["gate_proj"], e.MissingTargets);
        Assert.Contains("up_proj", e.Message);
        Assert.Contains("'gate_proj'", e.Message);

        var qwen = new[] { "transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.w1", "transformer.h.0.mlp.w2", "transformer.h.0.mlp.c_proj" }
            .Select(n => (n, new LoraLinear(4, 4, false))).ToList();
        var q = Assert.Throws<LoraTargetNotFoundException>(() => LoraInjector.Attach(qwen, new LoraSettings()));
        Assert.Contains("c_attn, c_proj", q.Message);
        Assert.Contains("w1", q.Message);
        foreach (var (_, layer) in qwen) layer.Dispose();
    }

    [Fact]
    public void Saved_adapter_has_peft_keys_shapes_metadata_and_config()
    {
        using var model = new TinyCausalLM(layers: 1);
        var settings = new LoraSettings(Rank: 4, Alpha: 16, Dropout: 0.05);
        LoraInjector.Attach(model.NamedLinears(), settings);
        string folder = TestPaths.NewTempFolder("peft");
        try
        {
            PeftAdapter.Save(folder, model.NamedLinears(), settings, "Qwen/Qwen2.5-0.5B-Instruct");
            string weights = Path.Combine(folder, PeftAdapter.WeightsFile);
            using (var reader = SafeTensorsReader.Open(weights))
                Assert.Equal("pt", reader.Metadata["format"]);
            var tensors = SafeTensors.LoadAll(weights);
            Assert.Equal(8, tensors.Count);
            Assert.Equal(new long[] { 4, 32 }, tensors["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].shape);
            Assert.Equal(new long[] { 32, 4 }, tensors["base_model.model.model.layers.0.self_attn.o_proj.lora_B.weight"].shape);
            Assert.All(tensors.Values, t => Assert.Equal(ScalarType.Float32, t.dtype));

            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, PeftAdapter.ConfigFile)))!.AsObject();
            Assert.Equal("LORA", (string?)config["peft_type"]);
            Assert.Equal("CAUSAL_LM", (string?)config["task_type"]);
            Assert.Equal(4, (int)config["r"]!);
            Assert.Equal(16, (int)config["lora_alpha"]!);
            Assert.Equal(0.05, (double)config["lora_dropout"]!);
            Assert.Equal("none", (string?)config["bias"]);
            Assert.False((bool)config["fan_in_fan_out"]!);
            Assert.True((bool)config["inference_mode"]!);
            Assert.False((bool)config["use_rslora"]!);
            Assert.True((bool)config["init_lora_weights"]!);
            Assert.Null(config["modules_to_save"]);
            Assert.True(config.ContainsKey("layers_to_transform") && config["layers_to_transform"] is null);
            Assert.True(config.ContainsKey("revision"));
            Assert.Equal("Qwen/Qwen2.5-0.5B-Instruct", (string?)config["base_model_name_or_path"]);
            Assert.Equal(["q_proj", "k_proj", "v_proj", "o_proj"], config["target_modules"]!.AsArray().Select(n => (string)n!));
            foreach (var t in tensors.Values) t.Dispose();
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void A_saved_adapter_loads_back_into_a_fresh_model_with_the_same_output()
    {
        var settings = new LoraSettings(Rank: 4, Alpha: 8, Dropout: 0);
        string folder = TestPaths.NewTempFolder("peft-load");
        try
        {
            using var scope = NewDisposeScope();
            var ids = tensor(new long[] { 1, 5, 9, 13, 2 }, [1, 5]);
            Tensor expected;
            using (var trained = new TinyCausalLM())
            {
                LoraInjector.Attach(trained.NamedLinears(), settings, seed: 3);
                using var g = new Generator(11);
                using (no_grad())
                    foreach (var (_, layer) in trained.NamedLinears().Where(l => l.Layer.HasAdapter))
                        layer.lora_B!.weight!.copy_(randn([layer.OutFeatures, 4], generator: g) * 0.3);
                expected = trained.Logits(ids);
                PeftAdapter.Save(folder, trained.NamedLinears(), settings, "tiny");
            }
            using var fresh = new TinyCausalLM();
            var baseline = fresh.Logits(ids);
            Assert.True((baseline - expected).abs().max().item<float>() > 1e-3);
            var loaded = PeftAdapter.Load(folder, fresh.NamedLinears());
            Assert.Equal(8, loaded.Count);
            var actual = fresh.Logits(ids);
            Assert.True(allclose(actual, expected, rtol: 1e-5, atol: 1e-5), $"max difference {(actual - expected).abs().max().item<float>()}");

            using var other = new TinyCausalLM(hidden: 16);
            Assert.Throws<AdapterFormatException>(() => PeftAdapter.Load(folder, other.NamedLinears()));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void A_truncated_weights_file_is_an_adapter_format_error()
    {
        var settings = new LoraSettings(Rank: 2, Alpha: 4, Dropout: 0);
        string folder = TestPaths.NewTempFolder("peft-truncated");
        try
        {
            using (var model = new TinyCausalLM(layers: 1))
            {
                LoraInjector.Attach(model.NamedLinears(), settings);
                PeftAdapter.Save(folder, model.NamedLinears(), settings, "tiny");
            }
            string weights = Path.Combine(folder, PeftAdapter.WeightsFile);
            File.WriteAllBytes(weights, File.ReadAllBytes(weights)[..^16]);
            using var fresh = new TinyCausalLM(layers: 1);
            var error = Assert.Throws<AdapterFormatException>(() => PeftAdapter.Load(folder, fresh.NamedLinears()));
            Assert.Contains(PeftAdapter.WeightsFile, error.Message);
            Assert.Contains("truncated", error.Message);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
