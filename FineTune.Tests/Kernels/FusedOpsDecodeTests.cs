using FineTune.Engine.Backend;
using FineTune.Engine.Kernels;
using FineTune.Engine.Models;
using FineTune.Tests.Models;
using FineTune.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;
using static FineTune.Tests.Kernels.TensorEquality;

namespace FineTune.Tests.Kernels;

/// <summary>The decode folds (FusedOps.Decode.cs) on the CPU: no kernel, each op its separate torch ops.</summary>
public class FusedOpsDecodeCpuTests
{
    public FusedOpsDecodeCpuTests() => _ = ComputeBackend.Current;

    [Fact]
    public void Add_and_norm_on_the_cpu_is_the_add_and_the_norm_and_leaves_delta_alone()
    {
        using var scope = NewDisposeScope();
        var x = randn(2, 3, 16);
        var delta = randn(2, 3, 16);
        var original = delta.clone();
        var weight = randn(16);
        var (sum, normed) = FusedOps.AddRmsNorm(x, delta, weight, 1e-6);
        Assert.True(Same(sum, x + delta));
        Assert.True(Same(normed, FusedOps.RmsNorm(x + delta, weight, 1e-6)));
        Assert.True(Same(delta, original));
    }

    [Fact]
    public void Silu_mul_of_halves_is_silu_mul_of_the_two_halves()
    {
        using var scope = NewDisposeScope();
        var gateUp = randn(2, 3, 20);
        var expected = nn.functional.silu(gateUp.narrow(-1, 0, 10)) * gateUp.narrow(-1, 10, 10); // (2, 3, 10)
        var y = FusedOps.SiluMulHalves(gateUp);
        Assert.Equal(new long[] { 2, 3, 10 }, y.shape);
        // torch's CPU SiLU takes another exp for strided input than for contiguous: equal within rounding.
        Assert.True(y.allclose(expected, 1e-6, 1e-7));
    }

    [Fact]
    public void The_rotary_store_kernel_does_not_run_on_the_cpu()
    {
        using var scope = NewDisposeScope();
        var q = randn(1, 4, 1, 8);
        var kv = randn(1, 2, 1, 8);
        var table = randn(1, 1, 1, 8);
        var keys = zeros(1, 2, 5, 8);
        var values = zeros(1, 2, 5, 8);
        Assert.Null(FusedOps.RotaryStore(q, kv, kv, table, table, keys, values, 0));
        Assert.Null(FusedOps.RotaryStore(randn(1, 1, 64), 4, 2, table, table, keys, values, 0));
        Assert.Equal(0, keys.abs().sum().item<float>());
    }
}

/// <summary>
/// The decode kernels against the separate ops they fold (<see cref="FusedOps.DecodeFoldsSuspended"/>, the other
/// kernels on) on the GPU in fp32, bf16 and fp16: bit-equal, as the kernels round as those ops do.
/// </summary>
[Trait(Category.Name, Category.Gpu)]
public class FusedOpsDecodeGpuTests
{
    public static TheoryData<ScalarType> Dtypes => FusedOpsGpuTests.Dtypes;

    private static Device Cuda() => FusedOpsGpuTests.Cuda();

    private static (Tensor Folded, Tensor Unfolded) Both(Func<Tensor> op)
    {
        var folded = op();
        FusedOps.DecodeFoldsSuspended = true;
        try { return (folded, op()); }
        finally { FusedOps.DecodeFoldsSuspended = false; }
    }

    [GpuTheory]
    [MemberData(nameof(Dtypes))]
    public void Rotary_store_equals_rope_then_the_cache_write(ScalarType dtype)
    {
        var device = Cuda();
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var (b, heads, kvHeads, d, slot) = (2, 6, 2, 64, 9);
        var qkv = randn(b, 1, (heads + 2 * kvHeads) * d, device: device).to(dtype);
        var q = qkv.narrow(2, 0, heads * d).view(b, heads, 1, d);
        var k = qkv.narrow(2, heads * d, kvHeads * d).view(b, kvHeads, 1, d);
        var v = qkv.narrow(2, (heads + kvHeads) * d, kvHeads * d).view(b, kvHeads, 1, d);
        using var rope = new RotaryEmbedding(d, new RopeSettings(10000.0), device);
        var (cos, sin) = rope.Compute(tensor(new long[] { slot, 3 }, device: device).view(b, 1), dtype);
        var (c, s) = AttentionOps.RotaryTables(cos, sin);
        var keys = randn(b, kvHeads, 12, d, device: device).to(dtype);
        var values = randn(b, kvHeads, 12, d, device: device).to(dtype);
        var expectedKeys = keys.clone();
        var expectedValues = values.clone();
        expectedKeys.narrow(2, slot, 1).copy_(FusedOps.Rotary(k, c, s));
        expectedValues.narrow(2, slot, 1).copy_(v);
        var expectedQ = FusedOps.Rotary(q, c, s);
        foreach (bool stacked in new[] { false, true })
        {
            var (kk, vv) = (keys.clone(), values.clone());
            var rotated = stacked ? FusedOps.RotaryStore(qkv, heads, kvHeads, c, s, kk, vv, slot) : FusedOps.RotaryStore(q, k, v, c, s, kk, vv, slot);
            Assert.NotNull(rotated);
            Assert.True(Same(rotated, expectedQ), $"q, stacked {stacked}");
            Assert.True(Same(kk, expectedKeys), $"keys, stacked {stacked}");
            Assert.True(Same(vv, expectedValues), $"values, stacked {stacked}");
        }
    }

    [GpuTheory]
    [MemberData(nameof(Dtypes))]
    public void Add_norm_and_silu_mul_of_halves_equal_the_separate_ops(ScalarType dtype)
    {
        var device = Cuda();
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        foreach (int width in new[] { 3584, 896 })
        {
            var x = (randn(3, 1, width, device: device) * 3).to(dtype);
            var delta = randn(3, 1, width, device: device).to(dtype);
            var weight = (randn(width, device: device) * 0.1 + 1).to(dtype);
            var (folded, unfolded) = Both(() =>
            {
                var (sum, normed) = FusedOps.AddRmsNorm(x, delta.clone(), weight, 1e-6);
                return cat([sum.flatten(), normed.flatten()]);
            });
            Assert.True(Same(folded, unfolded), $"add + norm, width {width}");
        }
        foreach (var (rows, inter) in new[] { (1, 4864), (3, 333) })
        {
            var gateUp = (randn(rows, 1, 2 * inter, device: device) * 4).to(dtype);
            var (folded, unfolded) = Both(() => FusedOps.SiluMulHalves(gateUp));
            Assert.True(Same(folded, unfolded), $"silu mul halves {rows}x{inter}");
        }
    }
}
