using FineTune.Engine.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Bench;

/// <summary>
/// The `kernels` checks of training's fused functions (FusedOps.Training.cs): output and input gradients with the
/// kernels against the torch ops' own autograd graph, at 7B widths. Bounds as FineTune.Tests/Kernels/FusedOpsTrainingTests.cs
/// states them: 1e-6 of the largest value in fp32, 1e-2 (one rounding step) in 16 bits.
/// </summary>
internal static class TrainingKernelCases
{
    /// <summary>Output and gradients of <paramref name="op"/> on fresh leaves, flattened into one tensor: fused, then the torch graph.</summary>
    private static (Tensor Fused, Tensor Plain) Both(Func<Tensor[], Tensor> op, Tensor[] inputs, Tensor dy, bool outputToo)
    {
        Tensor Run()
        {
            using var _ = enable_grad();
            var leaves = inputs.Select(t => t.detach().clone().requires_grad_(true)).ToArray();
            var y = op(leaves);
            y.backward([dy]);
            var grads = leaves.Select(l => l.grad!.flatten());
            return cat([.. (outputToo ? new[] { y.detach().flatten() } : []), .. grads]);
        }
        var fused = Run();
        FusedOps.PlainAutograd = true;
        try { return (fused, Run()); }
        finally { FusedOps.PlainAutograd = false; }
    }

    public static IEnumerable<(string Name, double Bound, Func<(Tensor, Tensor)> Run)> Cases(Device device, ScalarType dtype)
    {
        double bound = dtype == ScalarType.Float32 ? 1e-6 : 1e-2;
        yield return ("rms norm grad 3x37x3584", bound, () =>
        {
            var x = (randn(3, 37, 3584, device: device) * 3).to(dtype);
            var weight = (randn(3584, device: device) * 0.1 + 1).to(dtype);
            var dy = randn(3, 37, 3584, device: device).to(dtype);
            return Both(t => FusedOps.RmsNorm(t[0], weight, 1e-6), [x], dy, outputToo: false);
        });
        yield return ("rms norm train fwd", bound, () =>
        {
            var x = (randn(3, 37, 3584, device: device) * 3).to(dtype);
            var weight = (randn(3584, device: device) * 0.1 + 1).to(dtype);
            var dy = randn(3, 37, 3584, device: device).to(dtype);
            using var _ = enable_grad();
            var leaf = x.requires_grad_(true);
            var fused = FusedOps.RmsNorm(leaf, weight, 1e-6).detach();
            FusedOps.PlainAutograd = true;
            try { return (fused, FusedOps.RmsNorm(leaf, weight, 1e-6).detach()); }
            finally { FusedOps.PlainAutograd = false; }
        });
        yield return ("silu mul grad 5x18944", bound, () =>
        {
            var gate = (randn(5, 18944, device: device) * 4).to(dtype);
            var up = randn(5, 18944, device: device).to(dtype);
            var dy = randn(5, 18944, device: device).to(dtype);
            return Both(t => FusedOps.SiluMul(t[0], t[1]), [gate, up], dy, outputToo: true);
        });
        foreach (long n in new long[] { 3 * 37 * 3584, 333 })
            yield return ($"dropout p 0.1 {n} values, forward and backward", 0, () =>
            {
                // The kernel's output and gradient against the mask computed from its stated hash with torch's int64 ops.
                var seed = tensor(new[] { 0x1234_5678_9ABC_DEFL }, device: device);
                var x = randn(n, device: device).to(dtype);
                var dy = randn(n, device: device).to(dtype);
                using var _ = enable_grad();
                var leaf = x.detach().clone().requires_grad_(true);
                var y = FusedOps.Dropout(leaf, 0.1, seed, key: 5) ?? throw new InvalidOperationException("the dropout kernel did not run");
                y.backward([dy]);
                var fused = cat([y.detach(), leaf.grad!]);
                var keep = DropoutKeepReference(0x1234_5678_9ABC_DEFL, 5, n, 0.1, device);
                var scale = tensor((float)(1.0 / (1.0 - 0.1)), device: device);
                var plain = cat([((x.to(ScalarType.Float32) * scale).to(dtype) * keep).to(dtype), ((dy.to(ScalarType.Float32) * scale).to(dtype) * keep).to(dtype)]);
                double kept = keep.to(ScalarType.Float64).mean().item<double>();
                if (n > 10_000 && Math.Abs(kept - 0.9) > 0.005) throw new InvalidOperationException($"dropout kept {kept:F4} of the values, not 0.9");
                return (fused, plain);
            });
    }

    /// <summary>finetune_kernels.cu's dropout mask with torch's int64 ops: kept where the top 24 bits of
    /// splitmix64(splitmix64(seed ^ splitmix64(key)) + i), over 2^24 in fp32, are at least p.</summary>
    private static Tensor DropoutKeepReference(long seed, long key, long n, double p, Device device)
    {
        long stream = (long)FineTune.Engine.Adapters.DropoutDraws.Mix((ulong)seed ^ FineTune.Engine.Adapters.DropoutDraws.Mix((ulong)key));
        var h = SplitMix64(arange(n, ScalarType.Int64, device) + stream);
        var u = LogicalShiftRight(h, 40).to(ScalarType.Float32) * (1.0f / 16777216.0f);
        return u >= (float)p;
    }

    private static Tensor SplitMix64(Tensor z)
    {
        z = z + unchecked((long)0x9E3779B97F4A7C15ul);
        z = (z ^ LogicalShiftRight(z, 30)) * unchecked((long)0xBF58476D1CE4E5B9ul);
        z = (z ^ LogicalShiftRight(z, 27)) * unchecked((long)0x94D049BB133111EBul);
        return z ^ LogicalShiftRight(z, 31);
    }

    private static Tensor LogicalShiftRight(Tensor z, int bits) => z.bitwise_right_shift(bits) & ((1L << (64 - bits)) - 1);
}
