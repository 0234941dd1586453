using FineTune.Engine.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Bench;

/// <summary>
/// The `kernels` checks of training's fused functions (FusedOps.Training.cs): output and input gradients with the
/// kernels against the torch ops' own autograd graph, at 7B widths. Bounds as FineTune.Tests/Kernels/FusedOpsTrainingTests.cs
/// states them: 1e-6 of the largest value in fp32, 1e-2 (one rounding step) in 16 bits. The device-seeded dropout against
/// its torch-op fallback, LoRA's dropout + A as one function against the dropout function and linear's graph, and RoPE's
/// output and input gradient against the torch ops' graph: exact.
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

    /// <summary>y, gate's and up's gradients of SiluMul on products of fresh leaves (gate·1, up·1), flattened.</summary>
    private static Tensor SiluMulGradients(Tensor gate, Tensor up, Tensor dy, bool inPlace)
    {
        using var _ = enable_grad();
        var gl = gate.detach().clone().requires_grad_(true);
        var ul = up.detach().clone().requires_grad_(true);
        long before = FusedOps.FusedCalls;
        var y = FusedOps.SiluMul(gl * 1.0, ul * 1.0, inPlace);
        if (FusedOps.FusedCalls != before + 1) throw new InvalidOperationException("the fused SiLU·up function did not run");
        y.backward([dy]);
        return cat([y.detach().flatten(), gl.grad!.flatten(), ul.grad!.flatten()]);
    }

    /// <summary>Targets for <paramref name="rows"/> rows of <paramref name="vocab"/>, rows 0, <paramref name="rows"/>/2 and the last ignored (-100).</summary>
    private static Tensor TargetsWithIgnored(int rows, long vocab, Device device, int seed)
    {
        var random = new Random(seed);
        var values = Enumerable.Range(0, rows).Select(_ => random.NextInt64(vocab)).ToArray();
        values[0] = values[rows / 2] = values[^1] = -100;
        return tensor(values, device: device);
    }

    /// <summary>The kernel's (dlogits, row losses) for 37 rows of <paramref name="vocab"/> logits, and torch's.</summary>
    private static ((Tensor, Tensor) Gradients, (Tensor, Tensor) Losses) CrossEntropy(Device device, ScalarType dtype, long vocab)
    {
        var logits = (randn(37, vocab, device: device) * 3).to(dtype);
        var targets = TargetsWithIgnored(37, vocab, device, seed: (int)vocab);
        var upstream = tensor(1.0f / 34, device: device);                                       // () fp32
        var kernel = logits.clone();
        var losses = FusedOps.CrossEntropyGradientInPlace(kernel, targets, upstream) ?? throw new InvalidOperationException("the cross-entropy kernel did not run");
        Tensor torchGradient;
        using (enable_grad())
        {
            var leaf = logits.detach().clone().requires_grad_(true);
            var sum = nn.functional.cross_entropy(leaf.to(ScalarType.Float32), targets, reduction: nn.Reduction.Sum);
            torchGradient = autograd.grad([sum], [leaf], [upstream])[0];
        }
        var torchLosses = nn.functional.cross_entropy(logits.to(ScalarType.Float32), targets, reduction: nn.Reduction.None);
        return ((kernel, torchGradient), (losses, torchLosses));
    }

    /// <summary>LmHeadLoss.Sum's loss and h's gradient with the kernel, then with the torch ops (PlainAutograd).</summary>
    private static ((Tensor, Tensor) Loss, (Tensor, Tensor) Dh) LmHeadLossBoth(Device device, ScalarType dtype)
    {
        using var head = new FineTune.Engine.Adapters.LoraLinear(3584, 152064, hasBias: false, device, dtype);
        head.LoadWeight((randn(152064, 3584, device: device) * 0.02).to(dtype));
        var h = randn(300, 3584, device: device).to(dtype);
        var targets = TargetsWithIgnored(300, 152064, device, seed: 300);
        var upstream = tensor(1.0f / 297, device: device);
        (Tensor Loss, Tensor Dh) Run()
        {
            using var _ = enable_grad();
            var leaf = h.detach().clone().requires_grad_(true);
            var loss = FineTune.Engine.Training.LmHeadLoss.Sum(head, leaf, targets, 128, upstream);
            loss.backward([upstream]);
            return (loss.detach().reshape(1), leaf.grad!);
        }
        long before = FineTune.Engine.Training.LmHeadLoss.KernelChunks;
        var kernel = Run();
        if (FineTune.Engine.Training.LmHeadLoss.KernelChunks != before + 3) throw new InvalidOperationException("the loss's 3 chunks did not run the kernel");
        FusedOps.PlainAutograd = true;
        try
        {
            var plain = Run();
            return ((kernel.Loss, plain.Loss), (kernel.Dh, plain.Dh));
        }
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
        // The training kernel's y against the no-gradient kernel's: bit for bit, or a checkpointed layer's recompute would
        // not see the activations its first pass made. 3584: 16 values a thread; 1030: one a thread.
        foreach (int width in new[] { 3584, 1030 })
            yield return ($"rms norm train fwd = no-gradient kernel, width {width}", 0, () =>
            {
                var x = (randn(3, 37, width, device: device) * 3).to(dtype);
                var weight = (randn(width, device: device) * 0.1 + 1).to(dtype);
                Tensor noGradient;
                using (no_grad()) noGradient = FusedOps.RmsNorm(x, weight, 1e-6);
                using var _ = enable_grad();
                return (FusedOps.RmsNorm(x.clone().requires_grad_(true), weight, 1e-6).detach(), noGradient);
            });
        yield return ("rms norm grad 3x37x1030", bound, () =>
        {
            var x = (randn(3, 37, 1030, device: device) * 3).to(dtype);
            var weight = (randn(1030, device: device) * 0.1 + 1).to(dtype);
            var dy = randn(3, 37, 1030, device: device).to(dtype);
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
        // SiLU·up's backward writing gate's and up's gradients over them (the MLP's gradientsInPlace) against new tensors: the
        // same arithmetic, bit-equal. gate and up are products of the leaves, as the MLP's are its projections' outputs.
        foreach (long cols in new long[] { 18944, 333 })
            yield return ($"silu mul grad in place 5x{cols} vs new tensors: y, dgate, dup", 0, () =>
            {
                var gate = (randn(5, cols, device: device) * 4).to(dtype);
                var up = randn(5, cols, device: device).to(dtype);
                var dy = randn(5, cols, device: device).to(dtype);
                return (SiluMulGradients(gate, up, dy, inPlace: true), SiluMulGradients(gate, up, dy, inPlace: false));
            });
        yield return ("silu mul + dropout+lora A grad in place 2x37x18944 r16 vs new tensors: h, out, da, dgate, dup", 0, () =>
        {
            var seed = tensor(new[] { 0x2468_ACE0_1357_9BDFL }, device: device);
            var gate = (randn(2, 37, 18944, device: device) * 4).to(dtype);
            var up = randn(2, 37, 18944, device: device).to(dtype);
            var a = (randn(16, 18944, device: device) * 0.05).to(dtype);
            var dy = randn(2, 37, 18944, device: device).to(dtype);
            var dDown = randn(2, 37, 16, device: device).to(dtype);
            Tensor Run(bool inPlace)
            {
                using var _ = enable_grad();
                var gl = gate.detach().clone().requires_grad_(true);
                var ul = up.detach().clone().requires_grad_(true);
                var al = a.detach().clone().requires_grad_(true);
                var (h, down) = FusedOps.SiluMulDropoutLinear(gl * 1.0, ul * 1.0, al, 0.1, seed, 17, inPlace);
                autograd.backward([h, down], [dy, dDown]);
                return cat([h.detach().flatten(), down.detach().flatten(), al.grad!.flatten(), gl.grad!.flatten(), ul.grad!.flatten()]);
            }
            return (Run(true), Run(false));
        });
        // Cross-entropy and its gradient over a chunk's logits in one kernel (LmHeadLoss) against torch's fp32 log_softmax,
        // nll_loss (sum) and autograd, the cast back to the logits' dtype included, for an upstream gradient of 1 / targets:
        // within one rounding step (the sum of exponentials is added in another order); the rows' losses within 1e-6.
        // Qwen2's 152,064-token vocabulary (16 values a thread) and 1,003 (one a thread); 3 of 37 rows ignored (-100).
        foreach (long vocab in new long[] { 152064, 1003 })
        {
            yield return ($"cross entropy grad 37x{vocab}, 3 rows ignored: dlogits", bound, () => CrossEntropy(device, dtype, vocab).Gradients);
            yield return ($"cross entropy grad 37x{vocab}, 3 rows ignored: row losses", 1e-6, () => CrossEntropy(device, dtype, vocab).Losses);
        }
        // LmHeadLoss's chunks through the kernel against the torch ops' chunks: lm_head 3584 -> 152064, 300 targets (5
        // ignored, as padded graph shapes have them) in chunks of 128, the loss and h's gradient.
        yield return ("lm head loss 300x3584 vocab 152064 chunks of 128: loss sum", 1e-6, () => LmHeadLossBoth(device, dtype).Loss);
        yield return ("lm head loss 300x3584 vocab 152064 chunks of 128: dh", bound, () => LmHeadLossBoth(device, dtype).Dh);
        // RoPE: q (28 heads) and k (4 heads) of a 7B Qwen2 layer as the attention layers pass them, transposed views of their
        // block of q, k and v's stacked projection output (rows 36·128 wide), 1500 packed tokens; dy a transposed view as
        // attention's backward may give it, or contiguous. Then B = 2 with RoPE's tables of batch 1 (broadcast), and with
        // random tables per row and a dy whose last dimension is strided (the kernel takes a contiguous copy).
        foreach (var (heads, column, stridedDy) in new[] { (28, 0, true), (4, 28, true), (4, 28, false) })
            yield return ($"rotary train 1x{heads}x1500x128 {(heads == 28 ? "q" : "k")}{(stridedDy ? ", dy transposed" : ", dy contiguous")}: out, dx", 0, () =>
                RotaryTraining(device, dtype, batch: 1, heads, tokens: 1500, column, width: 36, randomTables: false, stridedDy ? DyLayout.Transposed : DyLayout.Contiguous));
        yield return ("rotary train 2x3x37x128 rope tables of batch 1: out, dx", 0, () =>
            RotaryTraining(device, dtype, batch: 2, heads: 3, tokens: 37, column: 1, width: 5, randomTables: false, DyLayout.Transposed));
        yield return ("rotary train 2x3x37x128 random tables per row, dy last dim strided: out, dx", 0, () =>
            RotaryTraining(device, dtype, batch: 2, heads: 3, tokens: 37, column: 1, width: 5, randomTables: true, DyLayout.LastDimStrided));
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
        // 18944 columns: 16 values a thread (silu_mul_dropout16_, silu_mul_backward16_); 333: one a thread.
        foreach (long cols in new long[] { 18944, 333 })
            yield return ($"silu mul dropout kernel 5x{cols} p 0.1 vs silu mul then dropout", 0, () =>
            {
                var seed = tensor(new[] { 0x2468_ACE0_1357_9BDFL }, device: device);
                var gate = (randn(5, cols, device: device) * 4).to(dtype);
                var up = randn(5, cols, device: device).to(dtype);
                using var product = FusedOps.SiluMul(gate, up);
                var twoKernels = FusedOps.Dropout(product, 0.1, seed, 12) ?? throw new InvalidOperationException("the dropout kernel did not run");
                return (FusedOps.SiluMulDropped(gate, up, 0.1, seed, 12), twoKernels);
            });
        foreach (var (cols, rank) in new[] { (18944, 16), (333, 8) })
            yield return ($"silu mul + dropout+lora A fused 2x37x{cols} r{rank} vs silu mul then dropout+lora A: h, out, da, dgate, dup", 0, () =>
            {
                // FusedOps.SiluMulDropoutLinear (keeps gate and up, makes the product and its dropped copy again in backward)
                // against SiluMul then DropoutLinear as the MLP ran them before, the product also through a frozen base
                // matmul whose gradient adds to LoRA's: the same kernels and calls, bit-equal.
                var seed = tensor(new[] { 0x1357_9BDF_2468_ACE0L }, device: device);
                var gate = (randn(2, 37, cols, device: device) * 4).to(dtype);
                var up = randn(2, 37, cols, device: device).to(dtype);
                var a = (randn(rank, cols, device: device) * 0.05).to(dtype);
                var w = (randn(64, cols, device: device) * 0.05).to(dtype);
                var dy = randn(2, 37, 64, device: device).to(dtype);
                var dDown = randn(2, 37, rank, device: device).to(dtype);
                Tensor Run(Func<Tensor, Tensor, Tensor, (Tensor H, Tensor Down)> op)
                {
                    using var _ = enable_grad();
                    var gl = gate.detach().clone().requires_grad_(true);
                    var ul = up.detach().clone().requires_grad_(true);
                    var al = a.detach().clone().requires_grad_(true);
                    var (h, down) = op(gl, ul, al);
                    autograd.backward([nn.functional.linear(h, w), down], [dy, dDown]);
                    return cat([h.detach().flatten(), down.detach().flatten(), al.grad!.flatten(), gl.grad!.flatten(), ul.grad!.flatten()]);
                }
                long before = FusedOps.FusedCalls;
                var fused = Run((g, u, al) => FusedOps.SiluMulDropoutLinear(g, u, al, 0.1, seed, 13));
                if (FusedOps.FusedCalls != before + 1) throw new InvalidOperationException("the fused silu mul + dropout+linear function did not run");
                var separate = Run((g, u, al) =>
                {
                    var h = FusedOps.SiluMul(g, u);
                    return (h, FusedOps.DropoutLinear(h, al, 0.1, seed, 13));
                });
                return (fused, separate);
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

    private enum DyLayout { Contiguous, Transposed, LastDimStrided }

    /// <summary>
    /// FusedOps.Rotary where x needs a gradient (the fused function: rotary_ forward, rotary_backward_) against the torch ops'
    /// graph (PlainAutograd): the output and the gradient of the leaf x is a view of, (B, T, width·128) rows of which x takes
    /// heads·128 values from column·128 on, viewed as heads and transposed to (B, nH, T, 128). Tables: RoPE's (θ = 1e6) for
    /// packed rows of 300 positions, of batch 1 (broadcast over B), or random per row (their halves differ, so an index one
    /// half off shows). Bit-equal.
    /// </summary>
    private static (Tensor Fused, Tensor Plain) RotaryTraining(Device device, ScalarType dtype, int batch, int heads, int tokens, int column,
        int width, bool randomTables, DyLayout dyLayout)
    {
        const int d = 128;
        var projected = (randn(batch, tokens, width * d, device: device) * 4).to(dtype);
        Tensor cos, signedSin;
        if (randomTables) (cos, signedSin) = (randn(batch, 1, tokens, d, device: device).to(dtype), randn(batch, 1, tokens, d, device: device).to(dtype));
        else
        {
            var rope = new FineTune.Engine.Models.RotaryEmbedding(d, new FineTune.Engine.Models.RopeSettings(1000000.0), device);
            var positions = (arange(tokens, ScalarType.Int64, device) % 300).unsqueeze(0);   // (1, T): tables of batch 1, broadcast
            var (c, s) = rope.Compute(positions, dtype);
            (cos, signedSin) = FineTune.Engine.Models.AttentionOps.RotaryTables(c, s);        // (1, 1, T, 128)
        }
        var dy = dyLayout switch                                                                 // (B, nH, T, 128)
        {
            DyLayout.Transposed => randn(batch, tokens, heads, d, device: device).to(dtype).transpose(1, 2),
            DyLayout.LastDimStrided => randn([batch, heads, tokens, d, 2], device: device).to(dtype).select(-1, 0),
            _ => randn(batch, heads, tokens, d, device: device).to(dtype),
        };
        if (dy.is_contiguous() != (dyLayout == DyLayout.Contiguous) || (dy.stride(3) == 1) == (dyLayout == DyLayout.LastDimStrided))
            throw new InvalidOperationException("dy's layout is not the one the case names");
        Tensor Run()
        {
            using var _ = enable_grad();
            var leaf = projected.detach().clone().requires_grad_(true);
            var x = leaf.narrow(-1, column * d, heads * d).view(batch, tokens, heads, d).transpose(1, 2);    // (B, nH, T, 128)
            var y = FusedOps.Rotary(x, cos, signedSin);
            // The kernel lays its output out (B, T, nH, hD), flash attention's layout, so attention needs no copy of q.
            if (!FusedOps.PlainAutograd && !y.transpose(1, 2).is_contiguous())
                throw new InvalidOperationException("the RoPE kernel's output is not laid out (B, T, nH, hD)");
            y.backward([dy]);
            return cat([y.detach().flatten(), leaf.grad!.flatten()]);
        }
        long before = FusedOps.FusedCalls;
        var fused = Run();
        if (FusedOps.FusedCalls != before + 1) throw new InvalidOperationException("the fused RoPE function did not run");
        FusedOps.PlainAutograd = true;
        try { return (fused, Run()); }
        finally { FusedOps.PlainAutograd = false; }
    }
}
