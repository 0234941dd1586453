using System.Buffers.Binary;
using System.Text.Json;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Settings;
using FineTune.Web.Infrastructure;
using Microsoft.Extensions.DependencyInjection;

namespace FineTune.Tests.Web.Features.Models;

public class ModelCatalogTests
{
    /// <summary>Weights and biases stored in a safetensors file.</summary>
    private static long StoredWeights(string safetensors)
    {
        using var file = File.OpenRead(safetensors);
        Span<byte> length = stackalloc byte[8];
        file.ReadExactly(length);
        var header = new byte[BinaryPrimitives.ReadUInt64LittleEndian(length)];
        file.ReadExactly(header);
        using var json = JsonDocument.Parse(header);
        return json.RootElement.EnumerateObject()
            .Where(p => p.Name != "__metadata__")
            .Sum(p => p.Value.GetProperty("shape").EnumerateArray().Aggregate(1L, (n, d) => n * d.GetInt64()));
    }

    [Theory]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("llama3")]
    [InlineData("mistral")]
    [InlineData("qwen-v1")]
    public void Parameter_count_from_config_matches_the_checkpoint(string model)
    {
        // A local folder's shape is the engine's: the model built on the meta device, counted exactly (biases included).
        string folder = TestFiles.Fixture($"models/{model}");
        var shape = ModelCatalog.FactsOf(new TrainingSettings { Source = ModelSource.Local, Model = folder })!;
        Assert.Equal(StoredWeights(Path.Combine(folder, "model.safetensors")), shape.TotalParameters);
    }

    [Theory]
    [InlineData("Qwen/Qwen2.5-0.5B-Instruct", 494_032_768)]   // model card numbers (with biases)
    [InlineData("Qwen/Qwen2.5-1.5B-Instruct", 1_543_714_304)]
    [InlineData("Qwen/Qwen2.5-7B-Instruct", 7_615_616_512)]
    [InlineData("meta-llama/Llama-3.1-8B-Instruct", 8_030_261_248)]
    public void Preset_sizes_match_the_published_counts(string id, long published)
    {
        var shape = FineTune.Engine.Models.ModelFacts.Of(ModelCatalog.Find(id)!.Config);
        Assert.Equal(published, shape.TotalParameters); // exact: the engine counts its model built from the preset's config.json
    }

    [Fact]
    public void Lora_parameters_on_qkvo_match_peft_for_qwen2_5_0_5b()
    {
        // PEFT print_trainable_parameters for r=16 on q/k/v/o of Qwen2.5-0.5B: 2,162,688.
        var shape = FineTune.Engine.Models.ModelFacts.Of(ModelCatalog.Find("Qwen/Qwen2.5-0.5B-Instruct")!.Config);
        Assert.Equal(2_162_688, shape.LoraParameters(16, ModelCatalog.AttentionTargets));
    }

    [Fact]
    public void Four_bit_needs_much_less_weight_memory_than_16_bit()
    {
        var shape = FineTune.Engine.Models.ModelFacts.Of(ModelCatalog.Find("Qwen/Qwen2.5-7B-Instruct")!.Config);
        var settings = new TrainingSettings();
        var fp16 = TrainingEstimator.Memory(shape, settings, fourBit: false);
        var nf4 = TrainingEstimator.Memory(shape, settings, fourBit: true);
        Assert.InRange(fp16.Weights / 1e9, 15.0, 15.5);           // 7.6 B × 2 bytes
        Assert.InRange(nf4.Weights / 1e9, 5.3, 5.8);              // 6.5 B linears at ~4.1 bits (3.4 GB) + 1.1 B × 2 embedding/LM head in 16-bit
        Assert.True(nf4.Total < fp16.Total);
        Assert.True(fp16.Total > 16e9 && nf4.Total < 12e9, $"16-bit {fp16.Total / 1e9:0.0} GB, 4-bit {nf4.Total / 1e9:0.0} GB");
    }

    [Fact]
    public void Four_bit_estimate_is_near_what_the_engine_used_on_a_gpu()
    {
        // docs/benchmarks.md: QLoRA on the Qwen2-7B shape at 1 × 512 peaked at 7.97 GiB with gradient checkpointing
        // (the 4-bit default) and 10.35 GiB without, on an H200 (nvidia-smi, CUDA context included).
        var shape = FineTune.Engine.Models.ModelFacts.Of(ModelCatalog.Find("Qwen/Qwen2.5-7B-Instruct")!.Config);
        var settings = new TrainingSettings { BatchSize = 1, MaxSeqLength = 512 };
        double estimate = TrainingEstimator.Memory(shape, settings, fourBit: true).Total / (double)(1L << 30);
        Assert.InRange(estimate, 7.97 * 0.8, 7.97 * 1.25);
    }
}

public sealed class LocalModelFoldersTests : IDisposable
{
    private readonly string _root = Directory.CreateTempSubdirectory("finetune-roots-").FullName;
    private readonly string _outside = Directory.CreateTempSubdirectory("finetune-outside-").FullName;

    public void Dispose()
    {
        Directory.Delete(_root, true);
        Directory.Delete(_outside, true);
    }

    private static void MakeModel(string folder)
    {
        Directory.CreateDirectory(folder);
        File.WriteAllText(Path.Combine(folder, "config.json"), "{}");
        File.WriteAllBytes(Path.Combine(folder, "model.safetensors"), [0]);
    }

    [Fact]
    public void Only_folders_under_the_roots_open()
    {
        var models = Path.Combine(_root, "models");
        MakeModel(Path.Combine(models, "tiny"));
        MakeModel(Path.Combine(_outside, "secret"));
        Directory.CreateDirectory(Path.Combine(models, "empty"));
        Directory.CreateSymbolicLink(Path.Combine(models, "link"), Path.Combine(_outside, "secret"));
        var folders = new LocalModelFolders(new DataPaths(Path.Combine(_root, "data"), [models]));

        Assert.Equal(LocalFolderProblem.None, folders.Check(Path.Combine(models, "tiny")).Problem);
        Assert.Equal(LocalFolderProblem.OutsideRoots, folders.Check(Path.Combine(_outside, "secret")).Problem);
        Assert.Equal(LocalFolderProblem.OutsideRoots, folders.Check(Path.Combine(models, "..", "..", Path.GetFileName(_outside), "secret")).Problem);
        Assert.Equal(LocalFolderProblem.OutsideRoots, folders.Check(Path.Combine(models, "link")).Problem);
        Assert.Equal(LocalFolderProblem.OutsideRoots, folders.Check("/etc").Problem);
        Assert.Equal(LocalFolderProblem.OutsideRoots, folders.Check(models + "-evil").Problem);
        Assert.Equal(LocalFolderProblem.NoConfig, folders.Check(Path.Combine(models, "empty")).Problem);
        Assert.Equal(LocalFolderProblem.NotFound, folders.Check(Path.Combine(models, "missing")).Problem);
        Assert.Equal(LocalFolderProblem.Empty, folders.Check("  ").Problem);
        Assert.Contains(Path.Combine(models, "tiny"), folders.List());
        Assert.DoesNotContain(Path.Combine(models, "empty"), folders.List());
    }

    /// <summary>
    /// The settings page's model facts, the token counter and the local folder check name the same folders model folders
    /// (ModelReference.IsModelFolder): here each folder has the qwen2 fixture's weights and tokenizer, and config.json or not.
    /// </summary>
    [Theory]
    [InlineData("model", true)]
    [InlineData("no-config", false)]
    [InlineData("config-is-a-folder", false)]
    public void Facts_token_counts_and_the_folder_check_agree_on_what_a_model_folder_is(string name, bool isModel)
    {
        var models = Path.Combine(_root, "models");
        string folder = Directory.CreateDirectory(Path.Combine(models, name)).FullName;
        foreach (var file in Directory.EnumerateFiles(TestFiles.Fixture("models/qwen2")))
            if (Path.GetFileName(file) != "config.json" || isModel) File.Copy(file, Path.Combine(folder, Path.GetFileName(file)));
        if (name == "config-is-a-folder") Directory.CreateDirectory(Path.Combine(folder, "config.json"));
        var settings = new TrainingSettings { Source = ModelSource.Local, Model = folder };
        var folders = new LocalModelFolders(new DataPaths(Path.Combine(_root, "data"), [models]));

        Assert.Equal(isModel, FineTune.Engine.Hub.ModelReference.IsModelFolder(folder));
        Assert.Equal(isModel, ModelCatalog.FactsOf(settings) is not null);
        Assert.Equal(isModel, new FineTune.Web.Features.Engine.TokenCounter(Microsoft.Extensions.Logging.Abstractions.NullLogger<FineTune.Web.Features.Engine.TokenCounter>.Instance).IsExact(settings));
        Assert.Equal(isModel ? LocalFolderProblem.None : LocalFolderProblem.NoConfig, folders.Check(folder).Problem);
        Assert.Equal(isModel, folders.List().Contains(folder));
    }

    [Fact]
    public void Roots_apply_only_when_enforced()
    {
        MakeModel(Path.Combine(_outside, "mine"));
        var paths = new DataPaths(Path.Combine(_root, "data"));

        Assert.Equal(LocalFolderProblem.None, new LocalModelFolders(paths, () => false).Check(Path.Combine(_outside, "mine")).Problem);
        Assert.Equal(LocalFolderProblem.OutsideRoots, new LocalModelFolders(paths, () => true).Check(Path.Combine(_outside, "mine")).Problem);
    }

    [Fact]
    public void The_web_app_on_localhost_opens_any_readable_model_folder_and_behind_a_token_only_the_roots()
    {
        MakeModel(Path.Combine(_outside, "mine"));

        using (var local = new WebAppHost())
            Assert.Equal(LocalFolderProblem.None, local.Services.GetRequiredService<LocalModelFolders>().Check(Path.Combine(_outside, "mine")).Problem);

        using var exposed = new WebAppHost(settings: new Dictionary<string, string?> { ["FineTune:AccessToken"] = "open-sesame-42" }, urls: "http://0.0.0.0:0");
        Assert.Equal(LocalFolderProblem.OutsideRoots, exposed.Services.GetRequiredService<LocalModelFolders>().Check(Path.Combine(_outside, "mine")).Problem);
    }
}
