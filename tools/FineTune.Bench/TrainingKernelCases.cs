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
        // 18944 columns: 16 values a thread (silu_mul_backward16); 333: one a thread.
        foreach (long cols in new long[] { 18944, 333 })
            yield return ($"silu mul grad 5x{cols}", bound, () =>
            {
                var gate = (randn(5, cols, device: device) * 4).to(dtype);
                var up = randn(5, cols, device: device).to(dtype);
                var dy = randn(5, cols, device: device).to(dtype);
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
        foreach (var (width, rank, xGrad, kGrad) in new[] { (3584, 16, true, true), (3584, 16, true, false), (3584, 16, false, true), (333, 8, true, true) })
            foreach (bool againstGraph in new[] { false, true })
                yield return ($"dropout+lora A q/k/v as one 3x37x{width} r{rank}{(xGrad ? "" : " x w/o grad")}{(kGrad ? "" : " k unused")} vs {(againstGraph ? "dropout+linear graph" : "3 dropout+lora A")}: out, da{(xGrad ? ", dx" : "")}", 0, () =>
                {
                    // FusedOps.DropoutLinearShared (q, k and v's downs of one x as one function, LoraLinear.ForwardShared) against one
                    // DropoutLinear function per projection, or the dropout function and linear's graph per projection: the same
                    // calls, and x's gradient summed in the order autograd adds the per-projection ones. Bit-equal.
                    var seed = tensor(new[] { 0x0FED_CBA9_8765_4321L }, device: device);
                    FusedOps.DropoutDraw[] draws = [new(0.1, seed, 9), new(0.1, seed, 10), new(0.05, seed, 11)];
                    var x = randn(3, 37, width, device: device).to(dtype);
                    var a = Enumerable.Range(0, 3).Select(_ => (randn(rank, width, device: device) * 0.05).to(dtype)).ToArray();
                    var dy = Enumerable.Range(0, 3).Select(_ => randn(3, 37, rank, device: device).to(dtype)).ToArray();
                    int[] used = kGrad ? [0, 1, 2] : [0, 2];
                    Tensor Run(Func<Tensor, Tensor[], Tensor[]> downs)
                    {
                        using var _ = enable_grad();
                        var xl = x.detach().clone().requires_grad_(xGrad);
                        var al = a.Select(t => t.detach().clone().requires_grad_(true)).ToArray();
                        var ys = downs(xl, al);                                                     // (B, T, r) each
                        autograd.backward([.. used.Select(i => ys[i])], [.. used.Select(i => dy[i])]);
                        return cat([.. ys.Select(y => y.detach().flatten()), .. al.Select(l => l.grad is null ? zeros(1, dtype, device) : l.grad.flatten()),
                            .. (xGrad ? new[] { xl.grad!.flatten() } : [])]);
                    }
                    long before = FusedOps.FusedCalls;
                    var shared = Run((xl, al) => FusedOps.DropoutLinearShared(xl, al, draws));
                    if (FusedOps.FusedCalls != before + 1) throw new InvalidOperationException("the q/k/v dropout+linear function did not run alone");
                    var reference = againstGraph
                        ? Run((xl, al) => [.. al.Select((t, i) => nn.functional.linear(FusedOps.Dropout(xl, draws[i].P, draws[i].Seed, draws[i].Key) ?? throw new InvalidOperationException("the dropout kernel did not run"), t))])
                        : Run((xl, al) => [.. al.Select((t, i) => FusedOps.DropoutLinear(xl, t, draws[i].P, draws[i].Seed, draws[i].Key))]);
                    return (shared, reference);
                });
    }
}
