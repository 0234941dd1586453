using System.Text.Json.Nodes;
using FineTune.Engine.Backend;
using FineTune.Tests.Support;
using FineTune.Engine.Adapters;
using FineTune.Engine.Models;
using FineTune.Engine.Training;
using static TorchSharp.torch;

namespace FineTune.Tests.Models;

/// <summary>Issue 18: a model folder is checked against free memory before anything big is allocated.</summary>
public sealed class ModelMemoryCheckTests
{
    public ModelMemoryCheckTests() => _ = ComputeBackend.Current;

    [Fact]
    public void A_model_larger_than_the_available_memory_is_refused_before_any_tensor_is_read()
    {
        var reports = new List<ModelLoadProgress>();
        var options = new ModelLoadOptions
        {
            Device = CPU,
            DType = ScalarType.Float32,
            AvailableMemory = _ => new AvailableMemory(100_000, "only 100,000 bytes are free (test)"),
            Progress = new Recorder(reports),
        };
        var error = Assert.Throws<ModelMemoryException>(() => ModelLoader.Load(ModelFixtures.Folder("qwen2"), options));
        Assert.StartsWith("Not enough memory to load qwen2: its 0.", error.Message); // "its 0.xxM parameters as Float32 need about N MB on cpu, and ..."
        Assert.Contains("M parameters as Float32 need about ", error.Message);
        Assert.Contains("only 100,000 bytes are free (test)", error.Message);
        Assert.Equal(100_000, error.AvailableBytes);
        var facts = ModelFacts.Of(ModelFixtures.Folder("qwen2"));
        Assert.True(error.NeededBytes > facts.TotalParameters * 4, $"needed {error.NeededBytes}: the fp32 weights plus a tensor in flight");
        Assert.Empty(reports); // refused before the first tensor

        // With room enough it loads.
        using var model = ModelLoader.Load(ModelFixtures.Folder("qwen2"), options with { AvailableMemory = _ => new AvailableMemory(error.NeededBytes, "exactly enough") });
        Assert.NotEmpty(reports);
    }

    [Fact]
    public void The_load_check_counts_the_weights_as_the_training_estimate_does()
    {
        var facts = ModelFacts.Of(ModelFixtures.Folder("qwen2"));
        Assert.Equal(facts.TotalParameters * 4, facts.WeightBytes(4, fourBit: false));
        Assert.Equal(facts.TotalParameters * 2, facts.WeightBytes(2, fourBit: false));
        long nf4 = facts.WeightBytes(2, fourBit: true);
        Assert.Equal(facts.UnquantizedParameters * 2 + (long)(facts.QuantizableParameters * TrainingMemory.Nf4BytesPerWeight(true)), nf4);
        var estimate = TrainingMemory.Estimate(facts, new MemoryQuery(new LoraSettings(), 1, 64, FourBit: true));
        Assert.Equal(nf4, estimate.Weights);
        using var checkpoint = SafeTensorsCheckpoint.Open(ModelFixtures.Folder("qwen2"));
        Assert.True(ModelMemoryCheck.NeededBytes(facts, checkpoint, ScalarType.BFloat16, fourBit: true, doubleQuantization: true) > nf4);
    }

    private sealed class Recorder(List<ModelLoadProgress> reports) : IProgress<ModelLoadProgress>
    {
        public void Report(ModelLoadProgress value) => reports.Add(value);
    }
}

/// <summary>Runs alone: resident memory is a whole-process number, so tests running beside it would move it.</summary>
[CollectionDefinition(nameof(FailedLoadMemoryTests), DisableParallelization = true)]
public sealed class FailedLoadMemoryCollection;

/// <summary>Issue 18: memory returns after a failed load (the web app lives on after a run fails on its model).</summary>
[Collection(nameof(FailedLoadMemoryTests))]
public sealed class FailedLoadMemoryTests(Xunit.Abstractions.ITestOutputHelper output) : IDisposable
{
    private const long MiB = 1L << 20;
    /// <summary>What the process may keep of a ~190 MB load that failed at its last tensor.</summary>
    private const long RetainedBound = 24 * MiB;

    private readonly string _folder = Directory.CreateTempSubdirectory("ft-failed-load-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Fact]
    public void A_load_that_fails_at_its_last_tensor_gives_back_what_it_had_loaded()
    {
        _ = ComputeBackend.Current;
        WriteModelWithBadLastTensor(_folder);
        long before = SettledRss();
        long during = 0;
        var options = new ModelLoadOptions
        {
            Device = CPU,
            DType = ScalarType.Float32,
            Progress = new Peak(() => during = Math.Max(during, HostMemory.ResidentBytes())),
        };
        var error = Assert.Throws<ModelFormatException>(() => ModelLoader.Load(_folder, options));
        Assert.Contains("model.norm.weight", error.Message); // failed mid-way, at the tensor written last
        long after = SettledRss(trim: false); // what the loader gave back itself
        output.WriteLine($"resident MB: before {before / MiB}, during the load {during / MiB}, after it failed {after / MiB}");

        Assert.True(during - before > 150 * MiB, $"the load should have held its weights before failing: {(during - before) / MiB} MB above the start");
        Assert.True(after - before < RetainedBound,
            $"after the failed load the process kept {(after - before) / MiB} MB (before {before / MiB} MB, during {during / MiB} MB, after {after / MiB} MB); at most {RetainedBound / MiB} MB may stay");
    }

    /// <summary>
    /// A Qwen2 folder of about 190 MB (fp32, 4 layers of hidden 1024) whose last tensor in the file, model.norm.weight,
    /// has a shape config.json does not give: every other weight loads first, then the load fails.
    /// </summary>
    private static void WriteModelWithBadLastTensor(string folder)
    {
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(ModelFixtures.Folder("qwen2"), "config.json")))!.AsObject();
        config["hidden_size"] = 1024;
        config["intermediate_size"] = 2816;
        config["num_hidden_layers"] = 4;
        config["num_attention_heads"] = 16;
        config["num_key_value_heads"] = 8;
        config["layer_types"] = new JsonArray("full_attention", "full_attention", "full_attention", "full_attention");
        File.WriteAllText(Path.Combine(folder, "config.json"), config.ToJsonString());

        using var scope = NewDisposeScope();
        var shapes = new List<(string Name, long[] Shape)>();
        using (var meta = ModelLoader.Create(ModelConfig.Load(folder), new ModelBuild(CPU, ScalarType.Float32)))
            foreach (var (name, parameter) in meta.named_parameters())
                if (name != "lm_head.weight" && name != "model.norm.weight") shapes.Add((name, parameter.shape));
        var tensors = shapes.Select(s => new KeyValuePair<string, Tensor>(s.Name, zeros(s.Shape))).ToList();
        tensors.Add(new("model.norm.weight", zeros(1025)));
        SafeTensors.Save(Path.Combine(folder, "model.safetensors"), tensors);
    }

    private static long SettledRss(bool trim = true)
    {
        SettledMemory.Settle();
        if (trim) HostMemory.TrimNativeHeap(); // what writing the folder freed goes back too, so the start is not inflated
        return HostMemory.ResidentBytes();
    }

    private sealed class Peak(Action measure) : IProgress<ModelLoadProgress>
    {
        public void Report(ModelLoadProgress value) => measure();
    }
}
