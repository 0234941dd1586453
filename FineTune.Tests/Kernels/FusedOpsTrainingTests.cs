using FineTune.Engine.Backend;
using FineTune.Engine.Kernels;
using FineTune.Tests.Support;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace FineTune.Tests.Kernels;

/// <summary>
/// Training's fused RMSNorm and SiLU·up (FusedOps.Training.cs) against the torch ops' own autograd graph
/// (<see cref="FusedOps.PlainAutograd"/>), on the CPU (their torch-op fallbacks). Outputs bit-equal; input gradients
/// within 1e-6 of the largest in fp32 (the same arithmetic; sums may add in another order) and within one rounding
/// step of the 16-bit format (1e-2 of the largest) in bf16 and fp16.
/// </summary>
public class FusedOpsTrainingTests
{
    public static TheoryData<ScalarType> Dtypes => new(ScalarType.Float32, ScalarType.BFloat16, ScalarType.Float16);

    internal static double Bound(ScalarType dtype) => dtype == ScalarType.Float32 ? 1e-6 : 1e-2;

    /// <summary>Output and input gradients of <paramref name="op"/> on fresh leaves: fused, then the torch ops' graph.</summary>
    internal static (Tensor[] Fused, Tensor[] Plain) Both(Func<Tensor[], Tensor> op, Tensor[] inputs, Tensor dy)
    {
        Tensor[] Run()
        {
            var leaves = inputs.Select(t => t.detach().clone().requires_grad_(true)).ToArray();
            var y = op(leaves);
            Assert.True(y.requires_grad);
            y.backward([dy]);
            return [y.detach(), .. leaves.Select(l => l.grad!)];
        }
        var fused = Run();
        FusedOps.PlainAutograd = true;
        try { return (fused, Run()); }
        finally { FusedOps.PlainAutograd = false; }
    }

    internal static void AssertWithin(Tensor fused, Tensor plain, double bound, string what)
    {
        Assert.Equal(plain.shape, fused.shape);
        double diff = (fused.to(ScalarType.Float64) - plain.to(ScalarType.Float64)).abs().max().item<double>();
        double scale = plain.to(ScalarType.Float64).abs().max().item<double>();
        Assert.True(diff <= bound * scale, $"{what}: max |fused - torch graph| {diff:G3} over a scale of {scale:G3} (bound {bound:G3})");
    }

    [Theory]
    [MemberData(nameof(Dtypes))]
    public void Rms_norm_gradients_equal_the_torch_graphs(ScalarType dtype)
    {
        _ = ComputeBackend.Current;
        using var scope = NewDisposeScope();
        manual_seed(1);
        var x = (randn(3, 7, 96) * 3).to(dtype);
        var weight = (randn(96) * 0.1 + 1).to(dtype);
        var dy = randn(3, 7, 96).to(dtype);
        var (fused, plain) = Both(t => FusedOps.RmsNorm(t[0], weight, 1e-6), [x], dy);
        Assert.True(fused[0].eq(plain[0]).all().item<bool>(), "RMSNorm's output is not bit-equal");
        AssertWithin(fused[1], plain[1], Bound(dtype), "dx");
    }

    [Theory]
    [MemberData(nameof(Dtypes))]
    public void Silu_mul_gradients_equal_the_torch_graphs(ScalarType dtype)
    {
        _ = ComputeBackend.Current;
        using var scope = NewDisposeScope();
        manual_seed(2);
        var gate = (randn(4, 9, 200) * 4).to(dtype);
        var up = randn(4, 9, 200).to(dtype);
        var dy = randn(4, 9, 200).to(dtype);
        var (fused, plain) = Both(t => FusedOps.SiluMul(t[0], t[1]), [gate, up], dy);
        Assert.True(fused[0].eq(plain[0]).all().item<bool>(), "silu(gate) * up is not bit-equal");
        AssertWithin(fused[1], plain[1], Bound(dtype), "dgate");
        AssertWithin(fused[2], plain[2], Bound(dtype), "dup");
    }

    [Fact]
    public void A_trainable_norm_weight_takes_the_torch_graph_and_gets_its_gradient()
    {
        _ = ComputeBackend.Current;
        using var scope = NewDisposeScope();
        var x = randn(2, 5, 16).requires_grad_(true);
        var weight = ones(16).requires_grad_(true);
        FusedOps.RmsNorm(x, weight, 1e-6).sum().backward();
        Assert.NotNull(weight.grad);
        Assert.NotNull(x.grad);
    }
}

/// <summary>
/// What the fused functions keep between forward and backward, measured as resident memory (the tensors are large
/// enough that the CPU allocator maps and unmaps each): only the 16-bit input (and fp32 rstd) for RMSNorm, gate and up for
/// SiLU·up, nothing more (TorchSharp's empty_like twin of the output is freed at once: nothing but the output is left in the caller's scope), and none of it after backward
/// while the output still lives. The torch ops' graph keeps RMSNorm's fp32 copy of its input, and gate, silu(gate) and
/// up. Runs alone: resident memory is a whole-process number.
/// </summary>
[Collection(nameof(FusedOpsSavedMemoryTests))]
[Trait(Category.Name, Category.Slow)]
public sealed class FusedOpsSavedMemoryTests(ITestOutputHelper output)
{
    private const long MiB = 1L << 20;
    private const long Slack = 12 * MiB;
    private const int Rows = 6144, Width = 4096;                      // 48 MiB a bf16 tensor
    private const long Tensor16 = (long)Rows * Width * 2;

    private static long Resident()
    {
        string line = File.ReadLines("/proc/self/status").First(l => l.StartsWith("VmRSS:", StringComparison.Ordinal));
        return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
    }

    /// <summary>
    /// Bytes the graph of <paramref name="op"/> keeps beyond its output, after forward and after backward (output still
    /// alive). Its inputs are made from constants times a one-value leaf, so only the graph references them.
    /// </summary>
    private (long AfterForward, long AfterBackward, long LeftInScope) Kept(Func<Tensor[], Tensor> op, int inputs, bool plain)
    {
        using var scope = NewDisposeScope();
        var scale = ones(1, dtype: ScalarType.BFloat16).requires_grad_(true);
        var constants = Enumerable.Range(0, inputs).Select(_ => randn(Rows, Width, dtype: ScalarType.BFloat16)).ToArray();
        var dy = randn(Rows, Width, dtype: ScalarType.BFloat16);
        FusedOps.PlainAutograd = plain;
        try
        {
            GC.Collect();
            long before = Resident();
            Tensor y;
            long afterForward, leftInScope;
            using (var inner = NewDisposeScope())
            {
                var xs = constants.Select(c => c * scale).ToArray();
                long live = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
                y = op(xs);
                // On the GPU TorchSharp's empty_like twin of a managed function's output is memory at once; here its
                // pages stay untouched (not resident), so it is counted as a live tensor in the caller's scope.
                leftInScope = DisposeScopeManager.Statistics.ThreadTotalLiveCount - live;
                inner.MoveToOuter(y);
                foreach (var x in xs) x.Dispose();
                afterForward = Resident() - before - Tensor16;          // measured in the caller's scope, as a layer's next op would run
            }
            y.backward([dy]);
            using (var flush = NewDisposeScope())                         // a second fused backward: the first's returned gradients go
            {
                var tiny = ones(2, 8, dtype: ScalarType.BFloat16).requires_grad_(true);
                FusedOps.SiluMul(tiny, tiny * 2).sum().backward();
            }
            GC.Collect();
            long afterBackward = Resident() - before - Tensor16;
            GC.KeepAlive(y);
            return (afterForward, afterBackward, leftInScope);
        }
        finally
        {
            FusedOps.PlainAutograd = false;
        }
    }

    [Fact]
    public void Rms_norm_keeps_its_16_bit_input_and_releases_it_in_backward()
    {
        _ = ComputeBackend.Current;
        if (!File.Exists("/proc/self/status")) return;
        using var weight = ones(Width, dtype: ScalarType.BFloat16);
        Func<Tensor[], Tensor> op = t => FusedOps.RmsNorm(t[0], weight, 1e-6);
        var plain = Kept(op, 1, plain: true);
        var fused = Kept(op, 1, plain: false);
        output.WriteLine($"RMSNorm {Rows}x{Width} bf16, MiB kept beyond the output: torch graph {plain.AfterForward / MiB} (after backward {plain.AfterBackward / MiB}), fused {fused.AfterForward / MiB} (after backward {fused.AfterBackward / MiB})");
        Assert.InRange(plain.AfterForward, 2 * Tensor16 - Slack, 2 * Tensor16 + Slack);  // the fp32 copy
        Assert.InRange(fused.AfterForward, Tensor16 - Slack, Tensor16 + Slack);          // x itself (and rstd)
        Assert.InRange(fused.AfterBackward, -Slack, Slack);
        Assert.Equal(1, fused.LeftInScope);                                            // the output alone
    }

    [Fact]
    public void Silu_mul_keeps_gate_and_up_and_releases_them_in_backward()
    {
        _ = ComputeBackend.Current;
        if (!File.Exists("/proc/self/status")) return;
        Func<Tensor[], Tensor> op = t => FusedOps.SiluMul(t[0], t[1]);
        var plain = Kept(op, 2, plain: true);
        var fused = Kept(op, 2, plain: false);
        output.WriteLine($"SiLU·up {Rows}x{Width} bf16, MiB kept beyond the output: torch graph {plain.AfterForward / MiB} (after backward {plain.AfterBackward / MiB}), fused {fused.AfterForward / MiB} (after backward {fused.AfterBackward / MiB})");
        Assert.InRange(plain.AfterForward, 3 * Tensor16 - Slack, 3 * Tensor16 + Slack);  // gate, silu(gate), up
        Assert.InRange(fused.AfterForward, 2 * Tensor16 - Slack, 2 * Tensor16 + Slack);  // gate, up
        Assert.InRange(fused.AfterBackward, -Slack, Slack);
        Assert.Equal(1, fused.LeftInScope);
    }
}

[CollectionDefinition(nameof(FusedOpsSavedMemoryTests), DisableParallelization = true)]
public sealed class FusedOpsSavedMemoryCollection;
