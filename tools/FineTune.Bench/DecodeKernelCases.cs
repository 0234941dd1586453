using FineTune.Engine.Adapters;
using FineTune.Engine.Kernels;
using FineTune.Engine.Models;
using static TorchSharp.torch;

namespace FineTune.Bench;

/// <summary>
/// The `kernels` command's checks of the decode folds (FusedOps.Decode.cs, StackedLinear, AttentionOps.Attend's GQA
/// path): each against the same step with <see cref="FusedOps.DecodeFoldsSuspended"/> (the separate ops, kernels on),
/// as FineTune.Tests/Kernels/DecodeFoldsGpuTests.cs checks them. Bound 0: bit-equal.
/// </summary>
internal static class DecodeKernelCases
{
    /// <summary>Runs <paramref name="op"/> folded and then with the folds suspended.</summary>
    private static (Tensor Folded, Tensor Unfolded) Both(Func<Tensor> op)
    {
        var folded = op();
        FusedOps.DecodeFoldsSuspended = true;
        try { return (folded, op()); }
        finally { FusedOps.DecodeFoldsSuspended = false; }
    }

    public static IEnumerable<(string Name, double Bound, Func<(Tensor, Tensor)> Run)> Cases(Device device, ScalarType dtype)
    {
        double within = dtype == ScalarType.Float32 ? 1e-5 : 1e-2;
        foreach (bool stacked in new[] { false, true })
            yield return ($"rotary store 2x28/4{(stacked ? " stacked" : "")}", 0, () =>
            {
                var (b, heads, kvHeads, d, capacity, slot) = (2, 28, 4, 128, 50, 37);
                var qkv = randn(b, 1, (heads + 2 * kvHeads) * d, device: device).to(dtype);   // a projection's output
                var q = qkv.narrow(2, 0, heads * d).view(b, heads, 1, d);
                var k = qkv.narrow(2, heads * d, kvHeads * d).view(b, kvHeads, 1, d);
                var v = qkv.narrow(2, (heads + kvHeads) * d, kvHeads * d).view(b, kvHeads, 1, d);
                var rope = new RotaryEmbedding(d, new RopeSettings(1000000.0), device);
                var (cos, sin) = rope.Compute(tensor(new long[] { slot, slot - 5 }, device: device).view(b, 1), dtype);
                var (c, s) = AttentionOps.RotaryTables(cos, sin);                             // (B, 1, 1, hD)
                var keys = randn(b, kvHeads, capacity, d, device: device).to(dtype);
                var values = randn(b, kvHeads, capacity, d, device: device).to(dtype);
                Tensor Run(bool folded)
                {
                    var (kk, vv) = (keys.clone(), values.clone());
                    var rotated = folded
                        ? (stacked ? FusedOps.RotaryStore(qkv, heads, kvHeads, c, s, kk, vv, slot) : FusedOps.RotaryStore(q, k, v, c, s, kk, vv, slot))
                            ?? throw new InvalidOperationException("the rotary store kernel did not run")
                        : FusedOps.Rotary(q, c, s);
                    if (!folded)
                    {
                        kk.narrow(2, slot, 1).copy_(FusedOps.Rotary(k, c, s));
                        vv.narrow(2, slot, 1).copy_(v);
                    }
                    return cat([rotated.flatten(), kk.flatten(), vv.flatten()]);
                }
                return (Run(true), Run(false));
            });
        // 3584 and 896: 16 values a thread (FusedOps.NormLaunch); 1030 and 900: one a thread, blocks of 1024 and 256.
        foreach (int width in new[] { 3584, 896, 1030, 900 })
            yield return ($"add rms norm 3x{width}", 0, () =>
            {
                var x = (randn(3, 1, width, device: device) * 3).to(dtype);
                var delta = randn(3, 1, width, device: device).to(dtype);
                var weight = (randn(width, device: device) * 0.1 + 1).to(dtype);
                return Both(() =>
                {
                    var (sum, normed) = FusedOps.AddRmsNorm(x, delta.clone(), weight, 1e-6);
                    return cat([sum.flatten(), normed.flatten()]);
                });
            });
        foreach (var (rows, inter) in new[] { (1, 18944), (3, 333) })
            yield return ($"silu mul halves {rows}x2x{inter}", 0, () =>
            {
                var gateUp = (randn(rows, 1, 2 * inter, device: device) * 4).to(dtype);
                return Both(() => FusedOps.SiluMulHalves(gateUp));
            });
        yield return ("gqa decode attend 28/4 x 300", within, () =>
        {
            var q = randn(1, 28, 1, 128, device: device).to(dtype);
            var k = randn(1, 4, 300, 128, device: device).to(dtype);
            var v = randn(1, 4, 300, 128, device: device).to(dtype);
            return Both(() => AttentionOps.Attend(q, k, v, new AttentionMask(null, false)));
        });
        yield return ("stacked q/k/v 896 -> 896+128+128", within, () =>
        {
            LoraLinear Layer(int outFeatures)
            {
                var layer = new LoraLinear(896, outFeatures, hasBias: true, device: device, dtype: dtype);
                layer.LoadWeight(randn(outFeatures, 896, device: device).to(dtype) * 0.03);
                layer.LoadBias(randn(outFeatures, device: device).to(dtype) * 0.1);
                return layer;
            }
            LoraLinear[] layers = [Layer(896), Layer(128), Layer(128)];
            var stack = new StackedLinear(layers);
            stack.Stack();
            var x = randn(1, 1, 896, device: device).to(dtype);
            var folded = stack.Forward(x) ?? throw new InvalidOperationException("the stacked matmul did not run");
            return (folded, cat(layers.Select(l => l.forward(x)).ToArray(), -1));
        });
    }
}
