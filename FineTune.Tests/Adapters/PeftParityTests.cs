using System.Text.Json;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Models;
using FineTune.Tests.Support;
using static TorchSharp.torch;

namespace FineTune.Tests.Adapters;

/// <summary>
/// Logit parity with HF PEFT on the qwen2 fixture, from tools/parity/peft_check.py's output in
/// FineTune.Tests/Adapters/Golden/peft (made on the GPU machine with transformers 5.17 + peft 0.21: see
/// versions.json there): PEFT's own adapter loaded by us, and our adapter loaded by PEFT, give equal logits.
/// </summary>
[Trait(Category.Name, Category.Parity)]
public class PeftParityTests
{
    private readonly Xunit.Abstractions.ITestOutputHelper _log;

    public PeftParityTests(Xunit.Abstractions.ITestOutputHelper log)
    {
        _ = ComputeBackend.Current;
        _log = log;
    }

    private static string Golden(params string[] parts) => TestPaths.InRepo(["FineTune.Tests", "Adapters", "Golden", "peft", .. parts]);
    private static string Fixture => TestPaths.InRepo("FineTune.Tests", "Fixtures", "models", "qwen2");

    /// <summary>Our adapter for the script: r=4, alpha 8 on q/k/v/o of the qwen2 fixture, A and B from fixed generators.</summary>
    internal static void WriteOurAdapter(string folder)
    {
        using var model = ModelLoader.Load(Fixture, new ModelLoadOptions { DType = ScalarType.Float32 });
        var settings = new LoraSettings(Rank: 4, Alpha: 8, Dropout: 0);
        LoraInjector.Attach(model.NamedLinears(), settings, seed: 21);
        using var g = new Generator(22);
        using (no_grad())
            foreach (var (_, layer) in model.NamedLinears().Where(l => l.Layer.HasAdapter))
                layer.lora_B!.weight!.copy_(randn([layer.OutFeatures, 4], generator: g) * 0.1);
        PeftAdapter.Save(folder, model.NamedLinears(), settings, "FineTune.Tests/Fixtures/models/qwen2");
    }

    [Fact]
    public void Our_adapter_fixture_is_what_our_code_writes()
    {
        string committed = Golden("ours_adapter");
        if (Environment.GetEnvironmentVariable("FINETUNE_WRITE_GOLDEN") == "1") WriteOurAdapter(committed);
        string folder = TestPaths.NewTempFolder("ours-adapter");
        try
        {
            WriteOurAdapter(folder);
            var fresh = SafeTensors.LoadAll(Path.Combine(folder, PeftAdapter.WeightsFile));
            var stored = SafeTensors.LoadAll(Path.Combine(committed, PeftAdapter.WeightsFile));
            Assert.Equal(stored.Keys.Order(), fresh.Keys.Order());
            foreach (var (key, t) in stored)
                Assert.True(t.eq(fresh[key]).all().item<bool>(), key);
            foreach (var t in stored.Values.Concat(fresh.Values)) t.Dispose();
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void Peft_made_adapter_gives_pefts_logits_and_ours_gives_what_peft_computes_for_it()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(Golden("inputs.json")));
        var inputs = doc.RootElement.GetProperty("input_ids").EnumerateArray()
            .Select(a => a.EnumerateArray().Select(v => v.GetInt64()).ToArray()).ToList();

        float Compare(string logitsFile, Action<CausalLM>? prepare)
        {
            using var model = ModelLoader.Load(Fixture, new ModelLoadOptions { DType = ScalarType.Float32 });
            prepare?.Invoke(model);
            var golden = SafeTensors.LoadAll(Golden(logitsFile));
            using var _ = no_grad();
            float fromBase = 0, worst = 0;
            using var baseModel = ModelLoader.Load(Fixture, new ModelLoadOptions { DType = ScalarType.Float32 });
            for (int i = 0; i < inputs.Count; i++)
            {
                using var scope = NewDisposeScope();
                var logits = model.Logits(tensor(inputs[i], [1, inputs[i].Length]))[0];
                float diff = (logits - golden[$"logits.{i}"]).abs().max().item<float>();
                Assert.True(diff <= 1e-4f, $"{logitsFile} input {i}: max |Δ| {diff}");
                worst = Math.Max(worst, diff);
                fromBase = Math.Max(fromBase, (golden[$"logits.{i}"] - baseModel.Logits(tensor(inputs[i], [1, inputs[i].Length]))[0]).abs().max().item<float>());
            }
            foreach (var t in golden.Values) t.Dispose();
            _log.WriteLine($"{logitsFile}: max |logit difference| {worst:G3} over {inputs.Count} inputs (these logits differ from the base model's by up to {fromBase:G3})");
            return fromBase;
        }

        Assert.Equal(0f, Compare("base_logits.safetensors", null), 4);
        // Both adapters move the logits well beyond the tolerance, so equality with PEFT is a real check.
        Assert.True(Compare("peft_logits.safetensors", m => PeftAdapter.Load(Golden("peft_adapter"), m.NamedLinears())) > 1e-2f);
        Assert.True(Compare("ours_in_peft_logits.safetensors", m => PeftAdapter.Load(Golden("ours_adapter"), m.NamedLinears())) > 1e-2f);
    }
}
