using FineTune.Engine.Backend;
using FineTune.Engine.Generation;
using FineTune.Engine.Models;
using FineTune.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;
using Generator = FineTune.Engine.Generation.Generator;

namespace FineTune.Tests.Models;

/// <summary>A theory that runs only where an NVIDIA GPU is visible (skipped elsewhere, e.g. in CPU-only CI).</summary>
public sealed class GpuTheoryAttribute : TheoryAttribute
{
    public GpuTheoryAttribute()
    {
        if (!File.Exists("/dev/nvidiactl")) Skip = "needs an NVIDIA GPU";
    }
}

/// <summary>The fixture models on CUDA: fp32 logits still equal HF's; bf16 stays close and generates.</summary>
[Trait(Category.Name, Category.Gpu)]
public class GpuParityTests
{
    public static TheoryData<string> Fixtures => new(ModelFixtures.Names);

    private static Device Cuda()
    {
        var backend = ComputeBackend.Current;
        Assert.True(backend.IsCuda, $"A GPU is present but the engine runs on the CPU ({backend.Reason}); set FINETUNE_LIBTORCH to PyTorch's lib folder.");
        return backend.Device;
    }

    [GpuTheory]
    [MemberData(nameof(Fixtures))]
    public void Fp32_logits_on_cuda_match_transformers(string fixture)
    {
        var device = Cuda();
        var golden = ModelFixtures.LoadGolden(fixture);
        string folder = ModelFixtures.Folder(fixture);
        using var model = ModelLoader.Load(folder, new ModelLoadOptions { Device = device, DType = ScalarType.Float32 });
        var expected = SafeTensors.LoadAll(Path.Combine(folder, "golden.safetensors"));
        try
        {
            foreach (var entry in golden.Logits)
            {
                using var scope = NewDisposeScope();
                using var _ = no_grad();
                var ids = tensor(entry.InputIds.Select(i => (long)i).ToArray(), [1, entry.InputIds.Length]);
                var logits = model.Logits(ids)[0].cpu();
                double diff = (logits - expected[entry.Tensor]).abs().max().item<float>();
                Assert.True(diff <= 1e-4, $"{fixture} on CUDA: max |logit diff| {diff:G3}");
            }
            var greedy = golden.Greedy[0];
            Assert.Equal(greedy.NewTokens, new Generator(model).Generate(greedy.InputIds, GenerationSettings.Greedy(greedy.NewTokens.Length)).ToArray());
        }
        finally
        {
            foreach (var t in expected.Values) t.Dispose();
        }
    }

    [GpuTheory]
    [MemberData(nameof(Fixtures))]
    public void Bf16_on_cuda_stays_close_and_generation_frees_its_memory(string fixture)
    {
        var device = Cuda();
        var golden = ModelFixtures.LoadGolden(fixture);
        string folder = ModelFixtures.Folder(fixture);
        using var model = ModelLoader.Load(folder, new ModelLoadOptions { Device = device, DType = ScalarType.BFloat16 });
        var expected = SafeTensors.LoadAll(Path.Combine(folder, "golden.safetensors"));
        try
        {
            using (var scope = NewDisposeScope())
            using (no_grad())
            {
                var entry = golden.Logits[1];
                var ids = tensor(entry.InputIds.Select(i => (long)i).ToArray(), [1, entry.InputIds.Length]);
                var logits = model.Logits(ids)[0].to(ScalarType.Float32).cpu();
                var want = expected[entry.Tensor];
                double diff = (logits - want).abs().max().item<float>();
                double scale = want.abs().max().item<float>();
                Assert.True(diff < 0.05 * scale, $"{fixture} bf16 on CUDA: max |logit diff| {diff:G3} (scale {scale:G3})");
            }
            var generator = new Generator(model);
            var settings = new GenerationSettings { DoSample = true, Temperature = 0.8, TopP = 0.9, MaxNewTokens = 16, Seed = 3 };
            long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
            for (int i = 0; i < 50; i++) Assert.NotEmpty(generator.Generate(golden.Greedy[0].InputIds, settings with { Seed = i }).ToArray());
            Assert.Equal(live, DisposeScopeManager.Statistics.ThreadTotalLiveCount);
        }
        finally
        {
            foreach (var t in expected.Values) t.Dispose();
        }
    }
}
