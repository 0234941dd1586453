using FineTune.Engine.Backend;
using FineTune.Engine.Training;
using FineTune.Tests.Adapters;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FineTune.Tests.Training;

public class FlatAdamWTests
{
    public FlatAdamWTests() => _ = ComputeBackend.Current;

    // LoRA shapes of a Qwen2.5-0.5B-like layer (r 16: q/o 896→896, k/v 896→128), plus a 1-D one.
    private static readonly long[][] Shapes = [[16, 896], [896, 16], [16, 896], [128, 16], [16, 896], [128, 16], [16, 896], [896, 16], [7]];

    /// <summary>Two independent sets of parameters with the same random values.</summary>
    private static (List<Parameter> Reference, List<Parameter> Ours) TwinParameters(int seed)
    {
        using var g = new Generator((ulong)seed);
        var reference = new List<Parameter>();
        var ours = new List<Parameter>();
        foreach (var shape in Shapes)
        {
            using var value = randn(shape, generator: g);
            reference.Add(new Parameter(value.clone()));
            ours.Add(new Parameter(value.clone()));
        }
        return (reference, ours);
    }

    private static List<Tensor> RandomGradients(Generator g, double scale) => [.. Shapes.Select(s => randn(s, generator: g) * scale)];

    private static float MaxDifference(IEnumerable<Tensor> a, IEnumerable<Tensor> b) =>
        a.Zip(b).Max(pair => (pair.First - pair.Second).abs().max().item<float>());

    [Fact]
    public void Five_steps_equal_torch_AdamW_with_weight_decay_and_a_changing_learning_rate()
    {
        using var scope = NewDisposeScope();
        var (reference, ours) = TwinParameters(seed: 11);
        using var torchAdamW = optim.AdamW(reference, lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.1);
        using var flat = new FlatAdamW(ours, learningRate: 1e-2, beta1: 0.9, beta2: 0.999, epsilon: 1e-8, weightDecay: 0.1);
        using var g = new Generator(5);
        for (int step = 0; step < 5; step++)
        {
            double lr = 1e-2 * (1 - 0.15 * step);
            var grads = RandomGradients(g, scale: step % 2 == 0 ? 1.0 : 1e-3);
            using (no_grad())
            {
                for (int i = 0; i < grads.Count; i++)
                {
                    reference[i].grad = grads[i].clone();
                    ours[i].grad!.copy_(grads[i]); // writes into the flat gradient buffer through the parameter's view
                }
            }
            foreach (var group in torchAdamW.ParamGroups) group.LearningRate = lr;
            flat.LearningRate = lr;
            torchAdamW.step();
            flat.Step();
            float difference = MaxDifference(reference, ours);
            Assert.True(difference < 1e-6, $"step {step + 1}: parameters differ by {difference}");
        }
        Assert.Equal(5, flat.StepCount);
        // The parameters moved, and they still are views of the flat buffer.
        Assert.True(MaxDifference(reference, TwinParameters(seed: 11).Ours) > 1e-3);
        Assert.Equal(0, (cat(ours.Select(p => p.flatten()).ToList()) - flat.Values).abs().max().item<float>());
    }

    [Theory]
    [InlineData(1.0)]     // clips: the norm is ~100
    [InlineData(1e6)]     // no clipping: the gradients are untouched
    public void Clipping_equals_clip_grad_norm(double maxNorm)
    {
        using var scope = NewDisposeScope();
        var (reference, ours) = TwinParameters(seed: 3);
        using var flat = new FlatAdamW(ours, learningRate: 1e-3);
        using var g = new Generator(9);
        var grads = RandomGradients(g, scale: 1.0);
        using (no_grad())
        {
            for (int i = 0; i < grads.Count; i++)
            {
                reference[i].grad = grads[i].clone();
                ours[i].grad!.copy_(grads[i]);
            }
        }
        double expectedNorm = nn.utils.clip_grad_norm_(reference, maxNorm);
        double norm = flat.ClipGradNorm(maxNorm).item<float>();
        Assert.Equal(expectedNorm, norm, expectedNorm * 1e-6);
        float difference = MaxDifference(reference.Select(p => p.grad!), ours.Select(p => p.grad!));
        Assert.True(difference < 1e-7, $"clipped gradients differ by {difference}");
        if (maxNorm > expectedNorm) Assert.Equal(0, MaxDifference(grads, ours.Select(p => p.grad!)));
        else Assert.Equal(maxNorm, flat.Gradients.norm().item<float>(), 1e-5);
    }

    [Fact]
    public void Backward_accumulates_into_the_flat_gradient_buffer_and_grad_stays_a_view_of_it()
    {
        using var scope = NewDisposeScope();
        using var g = new Generator(2);
        var x = randn([3, 8], generator: g);
        using var a = nn.Linear(8, 4, hasBias: false);
        using var b = nn.Linear(4, 5, hasBias: false);
        using (no_grad())
        {
            a.weight!.copy_(randn([4, 8], generator: g));
            b.weight!.copy_(randn([5, 4], generator: g));
        }
        // Reference gradients from independent leaves with the same values.
        var a0 = a.weight!.detach().clone().requires_grad_(true);
        var b0 = b.weight!.detach().clone().requires_grad_(true);
        x.matmul(a0.t()).matmul(b0.t()).pow(2).sum().backward();
        var expected = cat([a0.grad!.flatten(), b0.grad!.flatten()]);

        using var flat = new FlatAdamW([a.weight!, b.weight!], learningRate: 1e-3);
        Tensor Loss() => b.forward(a.forward(x)).pow(2).sum();
        Loss().backward();
        Assert.Equal(0, (flat.Gradients - expected).abs().max().item<float>(), 1e-5f);
        Assert.Equal(0, (a.weight!.grad!.flatten() - flat.Gradients[..32]).abs().max().item<float>());

        Loss().backward(); // a second micro-batch accumulates in place
        Assert.Equal(0, (flat.Gradients - 2 * expected).abs().max().item<float>(), 1e-5f);

        using (no_grad()) flat.Gradients.fill_(3);
        Assert.Equal(3, b.weight!.grad!.min().item<float>());
        Assert.Equal(3, b.weight!.grad!.max().item<float>());
        flat.ZeroGrad();
        Assert.Equal(0, a.weight!.grad!.abs().max().item<float>());
        Assert.Equal(0, b.weight!.grad!.abs().max().item<float>());

        // The modules compute with the flat values: a step moves them, the next forward sees it.
        Loss().backward();
        var before = Loss().item<float>();
        flat.Step();
        Assert.Equal(0, (cat([a.weight!.flatten(), b.weight!.flatten()]) - flat.Values).abs().max().item<float>());
        Assert.NotEqual(before, Loss().item<float>());
    }

    [Fact]
    public void State_round_trips_through_a_file_and_a_different_layout_is_refused()
    {
        string folder = TestPaths.NewTempFolder("flat-adamw");
        try
        {
            using var scope = NewDisposeScope();
            string path = Path.Combine(folder, "optimizer.safetensors");
            var (first, second) = TwinParameters(seed: 4);
            using var straight = new FlatAdamW(first, learningRate: 1e-2, weightDecay: 0.01);
            using var g = new Generator(1);
            var grads = Enumerable.Range(0, 4).Select(_ => RandomGradients(g, 1.0)).ToList();
            void TakeStep(FlatAdamW optimizer, List<Tensor> stepGrads)
            {
                using (no_grad())
                    for (int i = 0; i < stepGrads.Count; i++) optimizer.Parameters[i].grad!.copy_(stepGrads[i]);
                optimizer.Step();
            }
            for (int s = 0; s < 2; s++) TakeStep(straight, grads[s]);
            straight.SaveState(path);
            for (int s = 2; s < 4; s++) TakeStep(straight, grads[s]);

            // A "resumed" run: parameters as they were after step 2, fresh optimizer, state from the file.
            using var resumedAfter2 = new FlatAdamW(second, learningRate: 1e-2, weightDecay: 0.01);
            for (int s = 0; s < 2; s++) TakeStep(resumedAfter2, grads[s]);
            using var reloaded = new FlatAdamW([.. second.Select(p => new Parameter(p.detach().clone()))], learningRate: 1e-2, weightDecay: 0.01);
            reloaded.LoadState(path);
            Assert.Equal(2, reloaded.StepCount);
            for (int s = 2; s < 4; s++) TakeStep(reloaded, grads[s]);
            Assert.Equal(0, MaxDifference(first, reloaded.Parameters));

            using var other = new FlatAdamW([new Parameter(zeros(16, 896)), new Parameter(zeros(896, 8))], learningRate: 1e-2);
            var e = Assert.Throws<CheckpointException>(() => other.LoadState(path));
            Assert.True(e.Message.Contains("16x896,896x8", StringComparison.Ordinal), e.Message);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void Parameters_that_are_not_fp32_or_are_listed_twice_are_refused()
    {
        using var half = new Parameter(zeros(4, 4, dtype: ScalarType.Float16));
        Assert.Contains("fp32", Assert.Throws<ArgumentException>(() => new FlatAdamW([half], 1e-3)).Message);
        using var p = new Parameter(zeros(4, 4));
        Assert.Contains("twice", Assert.Throws<ArgumentException>(() => new FlatAdamW([p, p], 1e-3)).Message);
    }
}
