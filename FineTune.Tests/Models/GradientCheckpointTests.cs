using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Models;
using static TorchSharp.torch;

namespace FineTune.Tests.Models;

public class GradientCheckpointTests
{
    public GradientCheckpointTests() => _ = ComputeBackend.Current;

    /// <summary>Loss and every LoRA gradient of one backward, with or without checkpointing.</summary>
    private static (double Loss, float[][] Grads) LossAndGrads(string family, bool checkpointing, bool quantized, double checkpointedShare = 0)
    {
        using var lm = ModelLoader.Load(ModelFixtures.Folder(family), new ModelLoadOptions
        {
            DType = ScalarType.Float32,
            LoadLinearWeight = quantized ? Nf4.QuantizeOnLoad(ScalarType.Float32) : null,
        });
        var settings = new LoraSettings(Rank: 4, Alpha: 8, Dropout: 0.2, TargetModules: family == "qwen-v1"
            ? ["c_attn", "c_proj", "w1", "w2"]
            : ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]);
        LoraInjector.Attach(lm.NamedLinears(), settings, seed: 11);
        var adapters = lm.NamedLinears().Select(l => l.Layer).Where(l => l.HasAdapter).ToList();
        // LoRA B starts at zero; give it values so every gradient path carries signal.
        using (no_grad())
        using (var g = new Generator(5))
            foreach (var layer in adapters) layer.lora_B!.weight!.copy_(randn(layer.lora_B.weight!.shape, generator: g) * 0.1);
        using var dropout = new Generator(21);
        foreach (var layer in adapters) layer.DropoutGenerator = dropout;
        lm.train();
        lm.GradientCheckpointing = checkpointing;
        lm.CheckpointedShare = checkpointedShare;

        using var scope = NewDisposeScope();
        // Two packed sequences (lengths 6 and 7): the block-diagonal mask must survive until backward.
        var ids = tensor(Enumerable.Range(0, 13).Select(i => (long)(i * 7 % 50 + 3)).ToArray(), [1, 13]);
        var positions = tensor(Enumerable.Range(0, 6).Concat(Enumerable.Range(0, 7)).Select(i => (long)i).ToArray(), [1, 13]);
        var hidden = lm.HiddenStates(ids, positions, AttentionMaskBuilder.PackedCausalMask(positions)); // (1, 13, H)
        using var probeGenerator = new Generator(9);
        var loss = (hidden * randn(hidden.shape, generator: probeGenerator)).sum();
        loss.backward();
        var grads = adapters.SelectMany(l => new[] { l.lora_A!.weight!, l.lora_B!.weight! })
            .Select(p => p.grad!.data<float>().ToArray()).ToArray();
        return (loss.item<float>(), grads);
    }

    /// <summary>
    /// With checkpointing off, CheckpointedShare checkpoints the first ⌈share × layers⌉ layers (the fixtures have 2): 0.3
    /// one, 0.6 both, 0 none. The loss and every gradient equal those of kept activations, as for whole checkpointing.
    /// </summary>
    [Theory]
    [InlineData(0.3, 1)]
    [InlineData(0.6, 2)]
    [InlineData(0.0, 0)]
    public void The_first_layers_of_a_share_run_checkpointed_with_the_gradients_of_kept_activations(double share, int checkpointedLayers)
    {
        var plain = LossAndGrads("qwen2", checkpointing: false, quantized: false);
        long before = GradientCheckpoint.CheckpointedCalls;
        var partly = LossAndGrads("qwen2", checkpointing: false, quantized: false, checkpointedShare: share);
        Assert.Equal(checkpointedLayers, GradientCheckpoint.CheckpointedCalls - before);
        Assert.Equal(plain.Loss, partly.Loss);
        AssertSameGradients(plain.Grads, partly.Grads, $"with {checkpointedLayers} layer(s) checkpointed");
    }

    /// <summary>Every LoRA gradient within 1e-6 of kept activations' (and some not zero: the comparison sees signal).</summary>
    private static void AssertSameGradients(float[][] kept, float[][] checkpointed, string what)
    {
        Assert.Equal(kept.Length, checkpointed.Length);
        Assert.Contains(kept, g => g.Any(v => v != 0));
        for (int i = 0; i < kept.Length; i++)
        {
            float worst = kept[i].Zip(checkpointed[i], (a, b) => MathF.Abs(a - b)).Max();
            Assert.True(worst <= 1e-6f, $"gradient {i} {what}: max |diff| {worst}");
        }
    }

    [Theory]
    [InlineData("qwen2", false)]
    [InlineData("llama3", false)]
    [InlineData("qwen3", false)]
    [InlineData("qwen-v1", false)]
    [InlineData("qwen2", true)]
    public void Checkpointed_layers_give_the_gradients_of_kept_activations_with_dropout(string family, bool quantized)
    {
        var plain = LossAndGrads(family, checkpointing: false, quantized);
        var checkpointed = LossAndGrads(family, checkpointing: true, quantized);
        Assert.Equal(plain.Loss, checkpointed.Loss);
        AssertSameGradients(plain.Grads, checkpointed.Grads, "checkpointed");
    }

    [Fact]
    public void Checkpointing_without_gradients_is_the_plain_forward()
    {
        using var lm = ModelLoader.Load(ModelFixtures.Folder("qwen2"), new ModelLoadOptions { DType = ScalarType.Float32 });
        var ids = tensor(new long[] { 5, 9, 14, 3 }, [1, 4]);
        using var _ = no_grad();
        using var plain = lm.Logits(ids);
        lm.GradientCheckpointing = true;
        using var checkpointed = lm.Logits(ids);
        Assert.True(plain.allclose(checkpointed, rtol: 0, atol: 0));
        Assert.False(checkpointed.requires_grad);
    }

    [Fact]
    public void Repeated_checkpointed_steps_leave_no_tensors_behind()
    {
        using var lm = ModelLoader.Load(ModelFixtures.Folder("qwen2"), new ModelLoadOptions { DType = ScalarType.Float32 });
        LoraInjector.Attach(lm.NamedLinears(), new LoraSettings(Rank: 4, Alpha: 8, Dropout: 0.2), seed: 11);
        lm.train();
        lm.GradientCheckpointing = true;
        var ids = tensor(new long[] { 5, 9, 14, 3, 8, 2 }, [1, 6]);
        var positions = tensor(new long[] { 0, 1, 2, 0, 1, 2 }, [1, 6]);
        void Step()
        {
            using var scope = NewDisposeScope();
            lm.HiddenStates(ids, positions, AttentionMaskBuilder.PackedCausalMask(positions)).square().sum().backward();
        }
        Step(); // warm-up: gradients, tables
        GC.Collect();
        GC.WaitForPendingFinalizers();
        long before = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        for (int i = 0; i < 3; i++) Step();
        GC.Collect();
        GC.WaitForPendingFinalizers();
        long after = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        Assert.True(after - before <= 0, $"{after - before} tensors leaked over 3 steps");
    }
}

/// <summary>
/// TorchSharp's managed function under a checkpointed layer (FineTune.Engine/Backend/ManagedAutograd.cs): the layer's
/// output alone is left in the caller's scope (TorchSharp's empty_like twin of it, as large as the kept input, is
/// freed at once), and the gradient through it is the layer's.
/// </summary>
public class CheckpointedLayerScopeTests
{
    public CheckpointedLayerScopeTests() => _ = ComputeBackend.Current;

    [Fact]
    public void A_checkpointed_layer_leaves_only_its_output_in_the_callers_scope()
    {
        using var scope = NewDisposeScope();
        var cos = ones(1, 4, 8);
        var sin = zeros(1, 4, 8);
        using var masks = new AttentionMaskBuilder(4, 0, null, ScalarType.Float32, CPU);
        var pass = DecoderPass.Create(cos, sin, masks, null, checkpointedLayers: int.MaxValue);
        var weight = full(8, 3.0f).requires_grad_(true);
        var hidden = randn(1, 4, 8) * weight;                                   // requires grad: no detached copy is made
        Func<Tensor, DecoderPass, Tensor> layer = (x, _) => x * 2;
        var retained = pass.RetainForBackward();                                // the pass's copies for backward, made before counting
        long live = TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        var output = GradientCheckpoint.Apply(layer, hidden, pass, checkpointed: true);
        Assert.Equal(1, TorchSharp.DisposeScopeManager.Statistics.ThreadTotalLiveCount - live);
        output.sum().backward();
        Assert.True(weight.grad!.allclose((hidden.detach() / weight.detach() * 2).sum([0, 1])));
        retained.Release();
    }
}
