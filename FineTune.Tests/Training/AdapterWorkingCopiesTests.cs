using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Models;
using FineTune.Engine.Training;
using FineTune.Tests.Models;
using static TorchSharp.torch;

namespace FineTune.Tests.Training;

public class AdapterWorkingCopiesTests
{
    public AdapterWorkingCopiesTests() => _ = ComputeBackend.Current;

    private static CausalLM Model(ScalarType dtype, bool quantized)
    {
        var lm = ModelLoader.Load(ModelFixtures.Folder("qwen2"), new ModelLoadOptions
        {
            DType = dtype,
            LoadLinearWeight = quantized ? Nf4.QuantizeOnLoad(dtype) : null,
        });
        LoraInjector.Attach(lm.NamedLinears(), new LoraSettings(Rank: 4, Alpha: 8, Dropout: 0.2,
            TargetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]), seed: 11);
        // LoRA B starts at zero; give it values so every gradient path carries signal.
        using (no_grad())
        using (var g = new TorchSharp.torch.Generator(5))
            foreach (var layer in Adapters(lm)) layer.lora_B!.weight!.copy_(randn(layer.lora_B.weight!.shape, generator: g) * 0.1);
        lm.train();
        return lm;
    }

    private static List<LoraLinear> Adapters(CausalLM lm) => [.. lm.NamedLinears().Select(l => l.Layer).Where(l => l.HasAdapter)];

    /// <summary>Two micro-batches' backward into the optimizer's fp32 gradients (accumulated), with the same dropout masks every call.</summary>
    private static (double[] Losses, float[] Grads) Backward(CausalLM lm, FlatAdamW optimizer, AdapterWorkingCopies? copies)
    {
        optimizer.ZeroGrad();
        using var dropout = new TorchSharp.torch.Generator(21);
        foreach (var layer in Adapters(lm)) layer.DropoutGenerator = dropout;
        var losses = new List<double>();
        for (int micro = 0; micro < 2; micro++)
        {
            using var scope = NewDisposeScope();
            // Two packed sequences (lengths 6 and 7).
            var ids = tensor(Enumerable.Range(0, 13).Select(i => (long)((i + micro) * 7 % 50 + 3)).ToArray(), [1, 13]);
            var positions = tensor(Enumerable.Range(0, 6).Concat(Enumerable.Range(0, 7)).Select(i => (long)i).ToArray(), [1, 13]);
            var hidden = lm.HiddenStates(ids, positions, AttentionMaskBuilder.PackedCausalMask(positions)); // (1, 13, H)
            using var probeGenerator = new TorchSharp.torch.Generator(9);
            var loss = (hidden.to(ScalarType.Float32) * randn(hidden.shape, generator: probeGenerator)).sum();
            loss.backward();
            copies?.AccumulateGradients();
            losses.Add(loss.item<float>());
        }
        foreach (var layer in Adapters(lm)) layer.DropoutGenerator = null;
        return ([.. losses], optimizer.Gradients.data<float>().ToArray());
    }

    [Theory]
    [InlineData(ScalarType.BFloat16, false, false)]
    [InlineData(ScalarType.BFloat16, false, true)]
    [InlineData(ScalarType.BFloat16, true, true)]
    [InlineData(ScalarType.Float16, false, true)]
    public void Working_copies_give_the_casts_losses_and_gradients_bit_for_bit(ScalarType dtype, bool quantized, bool checkpointing)
    {
        using var lm = Model(dtype, quantized);
        lm.GradientCheckpointing = checkpointing;
        var adapters = Adapters(lm);
        using var optimizer = new FlatAdamW(lm.parameters().Where(p => p.requires_grad).ToList(), learningRate: 1e-2);

        var cast = Backward(lm, optimizer, copies: null);
        using (var copies = AdapterWorkingCopies.For(optimizer, adapters))
        {
            Assert.NotNull(copies);
            Assert.All(adapters, layer => Assert.Equal(dtype, layer.ComputeCopies!.Value.A.dtype));
            var copied = Backward(lm, optimizer, copies);
            Assert.Equal(cast.Losses, copied.Losses);
            Assert.Contains(cast.Grads, g => g != 0);
            Assert.Equal(cast.Grads, copied.Grads);

            // After a step the refreshed copies are the new fp32 weights cast, as a cast in forward would make them.
            optimizer.Step();
            copies.Refresh();
            foreach (var layer in adapters)
            {
                Assert.True(layer.ComputeCopies!.Value.A.eq(layer.lora_A!.weight!.to(dtype)).all().item<bool>());
                Assert.True(layer.ComputeCopies!.Value.B.eq(layer.lora_B!.weight!.to(dtype)).all().item<bool>());
            }
        }
        Assert.All(adapters, layer => Assert.Null(layer.ComputeCopies));
    }

    [Fact]
    public void An_fp32_model_uses_its_weights_as_they_are()
    {
        using var lm = Model(ScalarType.Float32, quantized: false);
        using var optimizer = new FlatAdamW(lm.parameters().Where(p => p.requires_grad).ToList(), learningRate: 1e-2);
        Assert.Null(AdapterWorkingCopies.For(optimizer, Adapters(lm)));
    }
}
