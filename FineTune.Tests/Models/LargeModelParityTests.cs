using System.Text.Json;
using FineTune.Engine.Backend;
using FineTune.Engine.Generation;
using FineTune.Engine.Models;
using FineTune.Tests.Support;
using static TorchSharp.torch;
using Generator = FineTune.Engine.Generation.Generator;

namespace FineTune.Tests.Models;

/// <summary>A theory that runs only where FINETUNE_LARGE_FIXTURES names a folder (made by tools/fixtures/make_large_golden.py).</summary>
public sealed class LargeFixtureTheoryAttribute : TheoryAttribute
{
    public LargeFixtureTheoryAttribute()
    {
        if (LargeModelParityTests.Root is null) Skip = "set FINETUNE_LARGE_FIXTURES to the output of tools/fixtures/make_large_golden.py";
    }
}

/// <summary>Real-size random models (bf16 checkpoints) against HF: fp32 logits, greedy tokens, bf16 logits.</summary>
[Trait(Category.Name, Category.Gpu)]
[Trait(Category.Name, Category.Parity)]
public class LargeModelParityTests
{
    public static string? Root =>
        Environment.GetEnvironmentVariable("FINETUNE_LARGE_FIXTURES") is { Length: > 0 } root && Directory.Exists(root) ? root : null;

    public static TheoryData<string> Shapes()
    {
        var data = new TheoryData<string>();
        if (Root is null) data.Add("none");
        else foreach (var folder in Directory.GetDirectories(Root).Order()) data.Add(Path.GetFileName(folder));
        return data;
    }

    [LargeFixtureTheory]
    [MemberData(nameof(Shapes))]
    public void Fp32_and_bf16_logits_and_greedy_tokens_match_transformers(string shape)
    {
        var backend = ComputeBackend.Current;
        string folder = Path.Combine(Root!, shape);
        using var golden = JsonDocument.Parse(File.ReadAllText(Path.Combine(folder, "golden.json")));
        var expected = SafeTensors.LoadAll(Path.Combine(folder, "golden.safetensors"));
        try
        {
            using (var model = ModelLoader.Load(folder, new ModelLoadOptions { Device = backend.Device, DType = ScalarType.Float32 }))
            {
                // fp32 over 16-36 layers on a GPU: summation order differs from PyTorch's kernels, so relative 1e-3.
                Compare(model, golden.RootElement.GetProperty("logits"), expected, relative: 1e-3, shape);
                var greedy = golden.RootElement.GetProperty("greedy")[0];
                int[] prompt = greedy.GetProperty("input_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray();
                int[] want = greedy.GetProperty("new_tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();
                Assert.Equal(want, new Generator(model).Generate(prompt, GenerationSettings.Greedy(want.Length)).ToArray());
            }
            if (backend.IsCuda)
            {
                using var half = ModelLoader.Load(folder, new ModelLoadOptions { Device = backend.Device, DType = ScalarType.BFloat16 });
                Compare(half, golden.RootElement.GetProperty("logits_bf16"), expected, relative: 5e-2, shape);
            }
        }
        finally
        {
            foreach (var t in expected.Values) t.Dispose();
        }
    }

    private static void Compare(CausalLM model, JsonElement entries, Dictionary<string, Tensor> expected, double relative, string shape)
    {
        foreach (var entry in entries.EnumerateArray())
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            long[] ids = entry.GetProperty("input_ids").EnumerateArray().Select(e => (long)e.GetInt32()).ToArray();
            var logits = model.Logits(tensor(ids, [1, ids.Length]))[0].to(ScalarType.Float32).cpu();
            var want = expected[entry.GetProperty("tensor").GetString()!];
            double diff = (logits - want).abs().max().item<float>();
            double scale = want.abs().max().item<float>();
            Assert.True(diff <= relative * scale, $"{shape} {model.DType}: max |logit diff| {diff:G3} > {relative} × {scale:G3}");
        }
    }
}
