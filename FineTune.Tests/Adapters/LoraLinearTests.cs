using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using static TorchSharp.torch;

namespace FineTune.Tests.Adapters;

public class LoraLinearTests
{
    public LoraLinearTests() => _ = ComputeBackend.Current;

    private static LoraLinear Layer(int inF = 12, int outF = 10, bool bias = true, int seed = 1)
    {
        manual_seed(seed);
        var layer = new LoraLinear(inF, outF, bias);
        layer.LoadWeight(randn(outF, inF) * 0.1);
        if (bias) layer.LoadBias(randn(outF) * 0.1);
        return layer;
    }

    [Fact]
    public void Fresh_adapter_leaves_the_output_unchanged_and_has_peft_names_and_init()
    {
        using var scope = NewDisposeScope();
        using var layer = Layer();
        var x = randn(3, 5, 12);
        var before = layer.forward(x);
        layer.AttachLora(rank: 4, alpha: 8, dropout: 0.0);
        layer.eval();

        Assert.Equal(0, (layer.forward(x) - before).abs().max().item<float>());
        var keys = layer.state_dict().Keys.ToList();
        Assert.Contains("lora_A.weight", keys);
        Assert.Contains("lora_B.weight", keys);
        Assert.Contains("weight", keys);
        Assert.Equal(new long[] { 4, 12 }, layer.lora_A!.weight!.shape);
        Assert.Equal(new long[] { 10, 4 }, layer.lora_B!.weight!.shape);
        Assert.Equal(0, layer.lora_B.weight.abs().sum().item<float>());
        // kaiming_uniform(a=√5) on (r, in): bound = 1/√in, and it is not all zeros
        float bound = 1f / MathF.Sqrt(12);
        Assert.True(layer.lora_A.weight.abs().max().item<float>() <= bound);
        Assert.True(layer.lora_A.weight.abs().max().item<float>() > bound / 2);
        Assert.Equal(2.0, layer.Scaling);

        var trainable = layer.parameters().Where(p => p.requires_grad).ToList();
        Assert.Equal(2, trainable.Count);
        Assert.False(layer.weight!.requires_grad);
        Assert.False(layer.bias!.requires_grad);
    }

    [Fact]
    public void Forward_is_base_plus_scaled_BA_and_rslora_scales_by_root_r()
    {
        using var scope = NewDisposeScope();
        using var layer = Layer();
        layer.AttachLora(rank: 4, alpha: 8, dropout: 0.5, useRsLora: true);
        layer.eval(); // dropout off
        using (no_grad()) layer.lora_B!.weight!.copy_(randn(10, 4));
        var x = randn(2, 12);
        var expected = x.matmul(layer.weight!.t()) + layer.bias!
                       + x.matmul(layer.lora_A!.weight!.t()).matmul(layer.lora_B!.weight!.t()) * (8 / Math.Sqrt(4));
        Assert.True(allclose(layer.forward(x), expected, rtol: 1e-5, atol: 1e-6));
    }

    [Fact]
    public void Dropout_applies_to_the_lora_path_only_in_training()
    {
        using var scope = NewDisposeScope();
        using var layer = Layer();
        layer.AttachLora(rank: 4, alpha: 8, dropout: 0.9);
        using (no_grad()) layer.lora_B!.weight!.copy_(randn(10, 4));
        var x = randn(64, 12);
        layer.eval();
        var a = layer.forward(x);
        var b = layer.forward(x);
        Assert.Equal(0, (a - b).abs().max().item<float>());
        layer.train();
        var c = layer.forward(x);
        Assert.True((a - c).abs().max().item<float>() > 1e-3);
    }

    [Fact]
    public void Merge_and_unmerge_keep_the_output_and_merge_refuses_non_finite_weights()
    {
        using var scope = NewDisposeScope();
        using var layer = Layer();
        layer.AttachLora(rank: 4, alpha: 16, dropout: 0);
        layer.eval();
        using (no_grad()) layer.lora_B!.weight!.copy_(randn(10, 4));
        var x = randn(3, 12);
        var before = layer.forward(x);
        var baseWeight = layer.weight!.clone();

        layer.Merge();
        Assert.True(layer.Merged);
        Assert.True(allclose(layer.forward(x), before, rtol: 1e-5, atol: 1e-5));
        Assert.True((layer.weight! - baseWeight).abs().max().item<float>() > 1e-3);
        layer.Unmerge();
        Assert.True(allclose(layer.weight!, baseWeight, rtol: 1e-5, atol: 1e-6));
        Assert.True(allclose(layer.forward(x), before, rtol: 1e-5, atol: 1e-5));

        var beforeRefusal = layer.weight!.clone();
        using (no_grad()) layer.lora_B!.weight![0, 0] = float.PositiveInfinity;
        Assert.Throws<ArithmeticException>(layer.Merge);
        Assert.False(layer.Merged);
        Assert.True(layer.weight!.eq(beforeRefusal).all().item<bool>());
    }

    [Fact]
    public void Nf4_layer_drops_the_dense_weight_and_matches_a_dense_layer_with_the_dequantized_weight()
    {
        using var scope = NewDisposeScope();
        using var layer = Layer(inF: 64, outF: 48);
        var dense = layer.weight!.clone();
        layer.QuantizeWeight(computeDtype: ScalarType.Float32);
        Assert.Null(layer.weight);
        Assert.True(layer.IsQuantized);
        Assert.DoesNotContain(layer.named_parameters(), p => p.name == "weight");
        Assert.Contains(layer.named_buffers(), b => b.name == "weight_nf4");

        layer.AttachLora(rank: 4, alpha: 8, dropout: 0);
        using (no_grad()) layer.lora_B!.weight!.copy_(randn(48, 4) * 0.1);
        var dequantized = layer.BaseWeight(ScalarType.Float32);
        Assert.True((dequantized - dense).abs().max().item<float>() < 0.05);

        var x = randn(5, 64, requires_grad: true);
        var y = layer.forward(x);
        var expected = x.matmul(dequantized.t()) + layer.bias!
                       + x.matmul(layer.lora_A!.weight!.t()).matmul(layer.lora_B!.weight!.t()) * 2.0;
        Assert.True(allclose(y, expected, rtol: 1e-5, atol: 1e-5));
        using (no_grad())
        {
            // Inference (chat with a QLoRA model) runs the same path without a graph.
            var inference = layer.forward(x.detach());
            Assert.False(inference.requires_grad);
            Assert.True(allclose(inference, expected.detach(), rtol: 1e-5, atol: 1e-5));
        }

        // Backward through the re-dequantizing matmul: dx and the adapter gradients equal the dense path's.
        var g = randn(5, 48);
        (y * g).sum().backward();
        var dx = x.grad!.clone();
        var dA = layer.lora_A.weight.grad!.clone();
        layer.zero_grad();
        var x2 = x.detach().clone().requires_grad_(true);
        var y2 = x2.matmul(dequantized.t()) + layer.bias!
                 + x2.matmul(layer.lora_A.weight.t()).matmul(layer.lora_B.weight.t()) * 2.0;
        (y2 * g).sum().backward();
        Assert.True(allclose(dx, x2.grad!, rtol: 1e-5, atol: 1e-5));
        Assert.True(allclose(dA, layer.lora_A.weight.grad!, rtol: 1e-5, atol: 1e-5));
    }

    [Fact]
    public void Nf4_in_bf16_runs_forward_and_backward()
    {
        using var scope = NewDisposeScope();
        using var layer = Layer(inF: 64, outF: 32, bias: false);
        layer.QuantizeWeight(computeDtype: ScalarType.BFloat16);
        layer.AttachLora(rank: 2, alpha: 4, dropout: 0);
        var x = randn(3, 64).to(ScalarType.BFloat16);
        var y = layer.forward(x);
        Assert.Equal(ScalarType.BFloat16, y.dtype);
        y.@float().sum().backward();
        Assert.NotNull(layer.lora_A!.weight!.grad);
        Assert.Equal(ScalarType.Float32, layer.lora_A.weight.grad!.dtype);
    }

    [Fact]
    public void Merging_an_nf4_layer_makes_it_dense_with_the_same_output()
    {
        using var scope = NewDisposeScope();
        using var layer = Layer(inF: 64, outF: 16);
        layer.QuantizeWeight(computeDtype: ScalarType.Float32);
        layer.AttachLora(rank: 2, alpha: 4, dropout: 0);
        layer.eval();
        using (no_grad()) layer.lora_B!.weight!.copy_(randn(16, 2) * 0.1);
        var x = randn(3, 64);
        var before = layer.forward(x);
        layer.Merge();
        Assert.NotNull(layer.weight);
        Assert.False(layer.IsQuantized);
        Assert.True(allclose(layer.forward(x), before, rtol: 1e-4, atol: 1e-5));
    }
    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Nf4_projections_of_one_input_share_one_matmul_with_each_layers_lora(bool bias)
    {
        using var scope = NewDisposeScope();
        LoraLinear[] layers = [Layer(inF: 64, outF: 48, bias: bias, seed: 1), Layer(inF: 64, outF: 16, bias: bias, seed: 2), Layer(inF: 64, outF: 16, bias: bias, seed: 3)];
        foreach (var layer in layers) layer.QuantizeWeight(computeDtype: ScalarType.Float32);
        // LoRA on the first and last only (as q and v): the middle output is the product's column block alone.
        foreach (var layer in new[] { layers[0], layers[2] })
        {
            layer.AttachLora(rank: 4, alpha: 8, dropout: 0);
            using (no_grad()) layer.lora_B!.weight!.copy_(randn(layer.OutFeatures, 4) * 0.1);
        }
        var x = randn(2, 5, 64, requires_grad: true);
        var gradients = layers.Select(l => randn(2, 5, l.OutFeatures)).ToArray();

        var shared = LoraLinear.ForwardShared(x, layers);                     // one matmul (Nf4SharedLinear), LoRA per layer
        shared.Zip(gradients, (y, g) => (y * g).sum()).Aggregate((a, b) => a + b).backward();
        var sharedDx = x.grad!.clone();
        var sharedDA = layers[0].lora_A!.weight!.grad!.clone();
        x.grad!.zero_();
        foreach (var layer in layers) layer.zero_grad();

        var separate = layers.Select(l => l.forward(x)).ToArray();            // a matmul per layer (Nf4Linear)
        separate.Zip(gradients, (y, g) => (y * g).sum()).Aggregate((a, b) => a + b).backward();
        for (int i = 0; i < layers.Length; i++)
        {
            Assert.Equal(separate[i].shape, shared[i].shape);
            Assert.True(allclose(shared[i], separate[i], rtol: 1e-5, atol: 1e-6), $"output {i}");
        }
        Assert.True(allclose(sharedDx, x.grad!, rtol: 1e-5, atol: 1e-6));
        Assert.True(allclose(sharedDA, layers[0].lora_A!.weight!.grad!, rtol: 1e-5, atol: 1e-6));

        using (no_grad())
        {
            var inference = LoraLinear.ForwardShared(x.detach(), layers);
            for (int i = 0; i < layers.Length; i++) Assert.True(allclose(inference[i], separate[i].detach(), rtol: 1e-5, atol: 1e-6));
            // One row is the matrix-vector case: each layer's own forward, bit for bit.
            var row = x.detach()[0, 0].reshape(1, 1, 64);
            var single = LoraLinear.ForwardShared(row, layers);
            for (int i = 0; i < layers.Length; i++) Assert.True(single[i].eq(layers[i].forward(row)).all().item<bool>());
        }
    }
}
