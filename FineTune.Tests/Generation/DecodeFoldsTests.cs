using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Generation;
using FineTune.Engine.Kernels;
using FineTune.Engine.Models;
using FineTune.Tests.Models;
using FineTune.Tests.Support;
using static TorchSharp.torch;
using Generator = FineTune.Engine.Generation.Generator;

namespace FineTune.Tests.Generation;

/// <summary>
/// The decode folds (stacked q/k/v and gate/up, GQA attention without repeated K/V, and on CUDA the RoPE + cache store
/// and add + norm kernels) choose the ids and logits of the step without them (<see cref="FusedOps.DecodeFoldsSuspended"/>).
/// </summary>
public class DecodeFoldsTests
{
    public static TheoryData<string> Fixtures => new(ModelFixtures.Names);

    private static readonly int[] Prompt = [497, 834, 515, 414, 532, 293, 18, 77];

    internal static void AssertFoldedEqualsUnfolded(string fixture, Device device)
    {
        using var model = ModelLoader.Load(ModelFixtures.Folder(fixture), new ModelLoadOptions { Device = device, DType = ScalarType.Float32 });
        var stacks = model.modules().OfType<IStackedProjections>().SelectMany(m => m.Stacks).ToList();
        Assert.NotEmpty(stacks);
        Assert.All(stacks, s => Assert.True(s.IsStacked));
        int[] prompt = [.. Prompt.Select(id => id % model.Config.VocabSize)];
        var generator = new Generator(model);
        int[] folded = [.. generator.Generate(prompt, GenerationSettings.Greedy(24))];
        float[] foldedLogits = LastDecodeLogits(model, prompt, folded);
        FusedOps.DecodeFoldsSuspended = true;
        try
        {
            int[] unfolded = [.. generator.Generate(prompt, GenerationSettings.Greedy(24))];
            Assert.Equal(unfolded, folded);
            float[] unfoldedLogits = LastDecodeLogits(model, prompt, folded);
            double diff = foldedLogits.Zip(unfoldedLogits).Max(p => Math.Abs(p.First - p.Second));
            Assert.True(diff < 1e-4, $"{fixture}: logits of the last decode step differ by {diff:G3}");
        }
        finally { FusedOps.DecodeFoldsSuspended = false; }
    }

    /// <summary>The logits (fp32, host) of one decode step after the prompt and all but the last generated id.</summary>
    private static float[] LastDecodeLogits(CausalLM model, int[] prompt, int[] generated)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        long[] ids = [.. prompt.Select(i => (long)i), .. generated[..^1].Select(i => (long)i)];
        using var cache = model.NewCache(ids.Length + 1);
        model.HiddenStates(tensor(ids, [1, ids.Length]), cache: cache);
        var logits = model.Logits(tensor(new long[] { generated[^1] }, [1, 1]), cache: cache);
        return logits.to(ScalarType.Float32).cpu().data<float>().ToArray();
    }

    [Fact]
    public void A_loaded_model_is_stacked_and_disposing_it_lets_go_of_the_stacks()
    {
        _ = ComputeBackend.Current;
        var model = ModelLoader.Load(ModelFixtures.Folder("qwen2"), new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        var stacks = model.modules().OfType<IStackedProjections>().SelectMany(m => m.Stacks).ToList();
        Assert.Equal(2 * model.Config.NumHiddenLayers, stacks.Count); // q/k/v and gate/up of every layer
        Assert.All(stacks, s => Assert.True(s.IsStacked));
        model.Dispose();
        Assert.All(stacks, s => Assert.False(s.IsStacked));
    }

    [Fact]
    public void A_four_bit_load_stacks_nothing()
    {
        _ = ComputeBackend.Current;
        using var model = ModelLoader.Load(ModelFixtures.Folder("qwen2"), ModelLoadOptions.Base(ScalarType.Float32, fourBit: true, device: CPU));
        var stacks = model.modules().OfType<IStackedProjections>().SelectMany(m => m.Stacks).ToList();
        Assert.NotEmpty(stacks);
        Assert.All(stacks, s => Assert.False(s.IsStacked));
    }

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void Folded_decode_chooses_the_ids_of_the_unfolded_one_on_the_cpu(string fixture)
    {
        _ = ComputeBackend.Current;
        AssertFoldedEqualsUnfolded(fixture, CPU);
    }
}

[Trait(Category.Name, Category.Gpu)]
public class DecodeFoldsGpuTests
{
    public static TheoryData<string> Fixtures => new(ModelFixtures.Names);

    [GpuTheory]
    [MemberData(nameof(Fixtures))]
    public void Folded_decode_chooses_the_ids_of_the_unfolded_one_on_the_gpu(string fixture)
    {
        var backend = ComputeBackend.Current;
        Assert.True(backend.IsCuda, $"A GPU is present but the engine runs on the CPU ({backend.Reason}).");
        DecodeFoldsTests.AssertFoldedEqualsUnfolded(fixture, backend.Device);
    }
}
