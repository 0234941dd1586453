using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Models;
using static TorchSharp.torch;

namespace FineTune.Tests.Models;

public sealed class ModelLoaderTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("ft-loader-").FullName;

    public ModelLoaderTests() => _ = ComputeBackend.Current;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Fact]
    public void Parameter_names_equal_checkpoint_keys_and_everything_is_frozen_and_materialized()
    {
        string folder = ModelFixtures.Folder("qwen2-v5");
        using var model = ModelLoader.Load(folder, new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        using var checkpoint = SafeTensorsCheckpoint.Open(folder);
        var names = model.named_parameters().Select(p => p.name).ToHashSet();
        Assert.Equal(checkpoint.Names.ToHashSet(), names);
        Assert.All(model.parameters(), p => Assert.False(p.requires_grad));
        Assert.All(model.parameters(), p => Assert.False(p.is_meta));
    }

    [Fact]
    public void Tied_embeddings_share_one_tensor_with_lm_head()
    {
        using var model = ModelLoader.Load(ModelFixtures.Folder("qwen2"), new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        var embedding = model.get_parameter("model.embed_tokens.weight");
        Assert.Same(model.lm_head.weight, embedding);
        Assert.DoesNotContain(model.named_parameters(), p => p.name == "lm_head.weight"); // listed once, like PyTorch
    }

    [Fact]
    public void Named_linears_give_checkpoint_prefixes_and_hooks_see_each_one()
    {
        var seen = new List<string>();
        var taken = new List<string>();
        var options = new ModelLoadOptions
        {
            Device = CPU,
            DType = ScalarType.BFloat16,
            BeforeLoadLinear = (name, _) => seen.Add(name),
            LoadLinearWeight = (name, layer, weight) =>
            {
                if (!name.EndsWith("o_proj", StringComparison.Ordinal)) return false;
                Assert.Equal(ScalarType.BFloat16, weight.dtype);
                layer.LoadWeight(weight * 0); // a stand-in for quantizing: the hook owns this layer's weight
                taken.Add(name);
                return true;
            },
        };
        using var model = ModelLoader.Load(ModelFixtures.Folder("qwen-v1"), options);
        var linears = model.NamedLinears().Select(l => l.Name).ToList();
        Assert.Contains("transformer.h.0.attn.c_attn", linears);
        Assert.Contains("transformer.h.1.mlp.w2", linears);
        Assert.Equal("lm_head", linears[^1]);
        Assert.Equal(linears.Order(), seen.Order());
        Assert.Empty(taken); // qwen v1 has no o_proj

        var tiedSeen = new List<string>();
        using var tied = ModelLoader.Load(ModelFixtures.Folder("qwen2"), options with { BeforeLoadLinear = (name, _) => tiedSeen.Add(name) });
        Assert.DoesNotContain("lm_head", tiedSeen); // a tied lm_head is the embedding: never handed to hooks
        Assert.Contains("model.layers.1.self_attn.o_proj", tiedSeen);
        Assert.Equal(0f, tied.NamedLinears().First(l => l.Name == "model.layers.1.self_attn.o_proj").Layer.weight!.abs().max().to(ScalarType.Float32).item<float>());
        Assert.Equal(ScalarType.BFloat16, tied.lm_head.weight!.dtype);
    }

    [Fact]
    public void Missing_and_unexpected_weights_are_listed()
    {
        string source = ModelFixtures.Folder("mistral");
        foreach (string file in new[] { "config.json", "generation_config.json" }) File.Copy(Path.Combine(source, file), Path.Combine(_folder, file));
        using (var scope = NewDisposeScope())
        {
            var all = SafeTensors.LoadAll(Path.Combine(source, "model.safetensors"));
            all.Remove("model.layers.1.mlp.up_proj.weight");
            all["model.layers.1.mlp.extra.weight"] = zeros(2);
            SafeTensors.Save(Path.Combine(_folder, "model.safetensors"), all);
        }
        var error = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(_folder, new ModelLoadOptions { Device = CPU }));
        Assert.Contains("model.layers.1.mlp.up_proj.weight", error.Message);
        Assert.Contains("model.layers.1.mlp.extra.weight", error.Message);
    }

    [Fact]
    public void A_config_that_disagrees_with_the_weights_names_the_tensor()
    {
        string source = ModelFixtures.Folder("mistral");
        File.Copy(Path.Combine(source, "model.safetensors"), Path.Combine(_folder, "model.safetensors"));
        File.WriteAllText(Path.Combine(_folder, "config.json"),
            File.ReadAllText(Path.Combine(source, "config.json")).Replace("\"intermediate_size\": 128", "\"intermediate_size\": 96"));
        var error = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(_folder, new ModelLoadOptions { Device = CPU }));
        Assert.Contains("mlp", error.Message);
        Assert.Contains("96", error.Message);
    }

    [Fact]
    public void Reports_progress_tensor_by_tensor_and_can_be_cancelled()
    {
        string folder = ModelFixtures.Folder("qwen2-v5");
        var reports = new List<ModelLoadProgress>();
        using (ModelLoader.Load(folder, new ModelLoadOptions { Device = CPU, Progress = new Recorder(reports) })) { }
        using var checkpoint = SafeTensorsCheckpoint.Open(folder);
        Assert.Equal(checkpoint.Names.Count, reports.Count);
        Assert.Equal(checkpoint.TotalBytes, reports[^1].BytesLoaded);
        Assert.Equal(1.0, reports[^1].Fraction);
        Assert.True(reports.Zip(reports.Skip(1)).All(p => p.First.BytesLoaded < p.Second.BytesLoaded));

        using var cancel = new CancellationTokenSource();
        cancel.Cancel();
        Assert.Throws<OperationCanceledException>(() => ModelLoader.Load(folder, new ModelLoadOptions { Device = CPU, CancellationToken = cancel.Token }));
    }

    private sealed class Recorder(List<ModelLoadProgress> reports) : IProgress<ModelLoadProgress>
    {
        public void Report(ModelLoadProgress value) => reports.Add(value);
    }

    [Fact]
    public void Bfloat16_weights_give_logits_close_to_float32()
    {
        string folder = ModelFixtures.Folder("llama3");
        using var f32 = ModelLoader.Load(folder, new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        using var bf16 = ModelLoader.Load(folder, new ModelLoadOptions { Device = CPU, DType = ScalarType.BFloat16 });
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var ids = tensor(new long[] { 900, 556, 68, 549, 600, 530 }, [1, 6]);
        var a = f32.Logits(ids);
        var b = bf16.Logits(ids);
        Assert.Equal(ScalarType.BFloat16, b.dtype);
        double diff = (a - b.to(ScalarType.Float32)).abs().max().item<float>();
        double scale = a.abs().max().item<float>();
        Assert.True(diff < 0.05 * scale, $"bf16 differs by {diff} (logit scale {scale})");
        Assert.True(diff > 0, "bf16 should not be bit-identical to fp32");
    }
}

public sealed class SlidingWindowTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("ft-sliding-").FullName;

    public SlidingWindowTests() => _ = ComputeBackend.Current;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Fact]
    public void A_sliding_window_changes_long_inputs_and_the_cache_respects_it()
    {
        string source = ModelFixtures.Folder("mistral");
        File.Copy(Path.Combine(source, "model.safetensors"), Path.Combine(_folder, "model.safetensors"));
        File.WriteAllText(Path.Combine(_folder, "config.json"),
            File.ReadAllText(Path.Combine(source, "config.json")).Replace("\"sliding_window\": null", "\"sliding_window\": 4"));
        using var full = ModelLoader.Load(source, new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        using var windowed = ModelLoader.Load(_folder, new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        Assert.True(windowed.Config.IsSlidingLayer(0));

        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var ids = tensor(new long[] { 901, 556, 68, 549, 600, 530, 370, 257, 844 }, [1, 9]);
        var a = full.Logits(ids);
        var b = windowed.Logits(ids);
        // The first 4 positions see at most 4 keys either way; later ones lose the oldest keys.
        Assert.True((a.narrow(1, 0, 4) - b.narrow(1, 0, 4)).abs().max().item<float>() < 1e-5);
        Assert.True((a.narrow(1, 4, 5) - b.narrow(1, 4, 5)).abs().max().item<float>() > 1e-3);

        using var cache = windowed.NewCache(9);
        var prefix = windowed.Logits(ids.narrow(1, 0, 6), cache: cache);
        var step7 = windowed.Logits(ids.narrow(1, 6, 1), cache: cache);
        var rest = windowed.Logits(ids.narrow(1, 7, 2), cache: cache);
        var incremental = cat([prefix, step7, rest], 1);
        Assert.True((incremental - b).abs().max().item<float>() < 1e-5);
    }
}
