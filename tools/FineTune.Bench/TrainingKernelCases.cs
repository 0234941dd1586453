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
    }
}
