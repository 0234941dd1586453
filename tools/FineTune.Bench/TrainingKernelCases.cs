using FineTune.Engine.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Bench;

/// <summary>
/// The `kernels` checks of training's fused functions (FusedOps.Training.cs): output and input gradients with the
/// kernels against the torch ops' own autograd graph, at 7B widths. Bounds as FineTune.Tests/Kernels/FusedOpsTrainingTests.cs
/// states them: 1e-6 of the largest value in fp32, 1e-2 (one rounding step) in 16 bits. The device-seeded dropout against
/// its torch-op fallback, and LoRA's dropout + A as one function against the dropout function and linear's graph: exact.
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
                // The kernel's output and gradient against its torch-op fallback, which computes the stated hash with torch's int64 ops.
                var seed = tensor(new[] { 0x1234_5678_9ABC_DEFL }, device: device);
                var x = randn(n, device: device).to(dtype);
                var dy = randn(n, device: device).to(dtype);
                using var _ = enable_grad();
                var leaf = x.detach().clone().requires_grad_(true);
                var y = FusedOps.Dropout(leaf, 0.1, seed, key: 5) ?? throw new InvalidOperationException("the dropout kernel did not run");
                y.backward([dy]);
                var fused = cat([y.detach(), leaf.grad!]);
                var plain = cat([FusedOps.DropoutWithTorch(x, 0.1, seed, 5), FusedOps.DropoutWithTorch(dy, 0.1, seed, 5)]);
                double kept = FusedOps.DropoutKeep(seed, 5, n, 0.1).to(ScalarType.Float64).mean().item<double>();
                if (n > 10_000 && Math.Abs(kept - 0.9) > 0.005) throw new InvalidOperationException($"dropout kept {kept:F4} of the values, not 0.9");
                return (fused, plain);
            });
        foreach (var (b, t, width, rank, xGrad) in new[] { (3, 37, 3584, 16, true), (3, 37, 3584, 16, false), (2, 5, 333, 8, true) })
            yield return ($"dropout+lora A fused {b}x{t}x{width} r{rank}{(xGrad ? "" : " x w/o grad")}: out, da{(xGrad ? ", dx" : "")}", 0, () =>
            {
                // FusedOps.DropoutLinear (keeps x, draws the mask again in backward) against linear(dropout(x), a) as LoraLinear
                // ran it before: the dropout function, then linear's own graph. Same calls: bit-equal.
                var seed = tensor(new[] { 0x0FED_CBA9_8765_4321L }, device: device);
                var x = randn(b, t, width, device: device).to(dtype);
                var a = (randn(rank, width, device: device) * 0.05).to(dtype);
                var dy = randn(b, t, rank, device: device).to(dtype);
                Tensor Run(Func<Tensor, Tensor, Tensor> down)
                {
                    using var _ = enable_grad();
                    var xl = x.detach().clone().requires_grad_(xGrad);
                    var al = a.detach().clone().requires_grad_(true);
                    var y = down(xl, al);                                                           // (B, T, r)
                    y.backward([dy]);
                    return cat([y.detach().flatten(), al.grad!.flatten(), .. (xGrad ? new[] { xl.grad!.flatten() } : [])]);
                }
                long before = FusedOps.FusedCalls;
                var fused = Run((xl, al) => FusedOps.DropoutLinear(xl, al, 0.1, seed, 9));
                if (FusedOps.FusedCalls == before) throw new InvalidOperationException("the fused dropout+linear function did not run");
                var unfused = Run((xl, al) => nn.functional.linear(FusedOps.Dropout(xl, 0.1, seed, 9) ?? throw new InvalidOperationException("the dropout kernel did not run"), al));
                return (fused, unfused);
            });
    }
}
