using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using static TorchSharp.torch;
using static FineTune.Tests.Kernels.TensorEquality;

namespace FineTune.Tests.Adapters;

public class StackedLinearTests
{
    public StackedLinearTests() => _ = ComputeBackend.Current;

    private static LoraLinear Layer(int outF, bool bias, int seed)
    {
        manual_seed(seed);
        var layer = new LoraLinear(12, outF, bias);
        layer.LoadWeight(randn(outF, 12) * 0.1);
        if (bias) layer.LoadBias(randn(outF) * 0.1);
        return layer;
    }

    private static LoraLinear[] Projections(bool bias) => [Layer(8, bias, 1), Layer(4, bias, 2), Layer(4, bias, 3)];

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Stacked_matmul_equals_the_layers_one_by_one_and_keeps_their_weights_and_keys(bool bias)
    {
        using var scope = NewDisposeScope();
        var layers = Projections(bias);
        var x = randn(2, 1, 12);
        var separate = cat(layers.Select(l => l.forward(x)).ToArray(), -1);                   // (2, 1, 16)
        var before = layers.Select(l => l.state_dict().ToDictionary(p => p.Key, p => p.Value.clone())).ToArray();
        var stack = new StackedLinear(layers);
        stack.Stack();
        Assert.True(stack.IsStacked);

        using (no_grad())
        {
            var stacked = stack.Forward(x);
            Assert.NotNull(stacked);
            Assert.True(stacked.allclose(separate, 1e-6, 1e-6));
        }
        for (int i = 0; i < layers.Length; i++)
        {
            var after = layers[i].state_dict();
            Assert.Equal(before[i].Keys.Order(), after.Keys.Order());
            foreach (var (key, value) in before[i]) Assert.True(Same(value, after[key]), key);
            Assert.True(Same(layers[i].forward(x), separate.narrow(-1, i == 0 ? 0 : 4 + 4 * i, layers[i].OutFeatures)));
        }
    }

    [Theory]
    [InlineData(true)]
    [InlineData(false)]
    public void Training_through_the_stacked_matmul_gives_the_outputs_and_gradients_of_the_layers_one_by_one(bool bias)
    {
        using var scope = NewDisposeScope();
        var layers = Projections(bias);
        foreach (var (layer, i) in layers.Select((l, i) => (l, i)))
        {
            layer.AttachLora(rank: 2, alpha: 4, dropout: 0.0, generator: new Generator((ulong)(10 + i)));
            using (no_grad()) layer.lora_B!.weight!.copy_(randn(layer.OutFeatures, 2));
            layer.train();
        }
        layers[2].AdapterEnabled = false; // one projection without an adapter: its block is the base output alone
        manual_seed(4);
        var input = randn(2, 5, 12);
        var upstream = layers.Select(l => randn(2, 5, l.OutFeatures)).ToArray();

        (Tensor[] Outputs, Tensor InputGrad, Tensor[] AGrads) Run(StackedLinear? stacked)
        {
            var x = input.clone().requires_grad_(true);
            foreach (var l in layers.Where(l => l.AdapterActive)) l.lora_A!.weight!.grad?.zero_();
            var outputs = LoraLinear.ForwardShared(x, stacked, layers);
            var loss = outputs.Select((y, i) => (y * upstream[i]).sum()).Aggregate((a, b) => a + b);
            loss.backward();
            return ([.. outputs.Select(o => o.detach().clone())], x.grad!.clone(), [.. layers.Take(2).Select(l => l.lora_A!.weight!.grad!.clone())]);
        }

        var separate = Run(null);
        var stack = new StackedLinear(layers);
        stack.Stack();
        Assert.NotNull(stack.BaseOutputs(input));
        var stacked = Run(stack);

        for (int i = 0; i < layers.Length; i++) Assert.True(stacked.Outputs[i].allclose(separate.Outputs[i], 1e-5, 1e-6), $"output {i}");
        Assert.True(stacked.InputGrad.allclose(separate.InputGrad, 1e-5, 1e-6), "the input's gradient");
        for (int i = 0; i < 2; i++) Assert.True(stacked.AGrads[i].allclose(separate.AGrads[i], 1e-5, 1e-6), $"lora_A {i}'s gradient");
        Assert.False(layers[0].weight!.requires_grad);
    }

    [Fact]
    public void A_trainable_base_weight_runs_the_layers_one_by_one()
    {
        using var scope = NewDisposeScope();
        var layers = Projections(bias: false);
        var stack = new StackedLinear(layers);
        stack.Stack();
        layers[1].weight!.requires_grad_(true);
        Assert.Null(stack.BaseOutputs(randn(2, 3, 12)));
        Assert.True(stack.IsStacked);
    }

    [Fact]
    public void Weights_are_views_of_the_stack_so_a_merged_adapter_reaches_the_stacked_matmul()
    {
        using var scope = NewDisposeScope();
        var layers = Projections(bias: true);
        var stack = new StackedLinear(layers);
        stack.Stack();
        var x = randn(1, 1, 12);
        layers[1].AttachLora(rank: 2, alpha: 4, dropout: 0.0);
        using (no_grad()) layers[1].lora_B!.weight!.copy_(randn(4, 2));
        layers[1].eval();

        using var _ = no_grad();
        Assert.Null(stack.Forward(x)); // an active adapter: the layers run one by one
        var withAdapter = cat(layers.Select(l => l.forward(x)).ToArray(), -1);
        layers[1].Merge();
        var merged = stack.Forward(x);
        Assert.NotNull(merged);
        Assert.True(merged.allclose(withAdapter, 1e-5, 1e-5));
        layers[1].Unmerge();
        layers[1].AdapterEnabled = false;
        var baseOnly = stack.Forward(x);
        Assert.NotNull(baseOnly);
        Assert.True(baseOnly.allclose(cat(layers.Select(l => l.forward(x)).ToArray(), -1), 1e-6, 1e-6));
    }

    [Fact]
    public void A_replaced_weight_ends_the_stacking_and_the_layers_still_compute_their_own()
    {
        using var scope = NewDisposeScope();
        var layers = new[] { Layer(64, false, 1), Layer(64, false, 2) };
        var stack = new StackedLinear(layers);
        stack.Stack();
        layers[0].QuantizeWeight(computeDtype: ScalarType.Float32);
        var x = randn(1, 1, 12);
        using var _ = no_grad();
        Assert.Null(stack.Forward(x));
        Assert.False(stack.IsStacked);
        Assert.Equal(new long[] { 1, 1, 64 }, layers[0].forward(x).shape);
        Assert.True(layers[1].forward(x).allclose(nn.functional.linear(x, layers[1].weight!), 1e-6, 1e-6));
    }

    [Fact]
    public void Weights_not_loaded_yet_get_stacked_rows_that_loading_fills()
    {
        using var scope = NewDisposeScope();
        LoraLinear[] layers = [new(12, 8, true, META, ScalarType.Float32), new(12, 4, true, META, ScalarType.Float32)];
        var stack = new StackedLinear(layers);
        stack.Stack(); // no device for weights on the meta device: nothing to do
        Assert.False(stack.IsStacked);
        stack.Stack(CPU);
        Assert.True(stack.IsStacked);
        Assert.False(layers[0].weight!.is_meta);
        manual_seed(7);
        var weights = new[] { randn(8, 12), randn(4, 12) };
        var biases = new[] { randn(8), randn(4) };
        for (int i = 0; i < 2; i++)
        {
            layers[i].LoadWeight(weights[i]);
            layers[i].LoadBias(biases[i]);
        }
        var x = randn(1, 1, 12);
        using var _ = no_grad();
        var expected = cat([nn.functional.linear(x, weights[0], biases[0]), nn.functional.linear(x, weights[1], biases[1])], -1);
        Assert.True(stack.Forward(x)!.allclose(expected, 1e-6, 1e-6));
        Assert.True(Same(layers[1].weight!, weights[1]));
    }

    [Fact]
    public void Disposing_the_stack_lets_go_of_the_stacked_tensors()
    {
        using var scope = NewDisposeScope();
        var stack = new StackedLinear(Projections(bias: true));
        stack.Stack();
        stack.Dispose();
        Assert.False(stack.IsStacked);
        Assert.Null(stack.Forward(randn(1, 1, 12)));
    }

    [Fact]
    public void Layers_that_cannot_share_one_tensor_are_not_stacked_and_gradients_take_the_layers()
    {
        using var scope = NewDisposeScope();
        var mixedBias = new StackedLinear(Layer(4, true, 1), Layer(4, false, 2));
        mixedBias.Stack();
        Assert.False(mixedBias.IsStacked);

        var quantized = Layer(64, false, 3);
        quantized.QuantizeWeight(computeDtype: ScalarType.Float32);
        var withQuantized = new StackedLinear(quantized, Layer(64, false, 4));
        withQuantized.Stack();
        Assert.False(withQuantized.IsStacked);

        var stack = new StackedLinear(Projections(bias: true));
        stack.Stack();
        Assert.Null(stack.Forward(randn(1, 1, 12, requires_grad: true))); // recorded for backward: one by one
    }
}
