using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Kernels;

/// <summary>
/// Training's RMSNorm, SiLU·up, RoPE, LoRA dropout and LoRA dropout with A as autograd functions of their own, for the
/// memory a step holds between forward and backward, and for the host's time (RoPE: one node instead of the torch ops'
/// four, one kernel each way). The torch ops' graph keeps per token and norm HF's fp32 copy of the input (4
/// bytes a value; the ops after the upcast save it), per MLP gate, silu(gate) and up (three 16-bit values per intermediate
/// unit), and per adapted projection the dropped copy of its input; these functions keep the 16-bit input and one fp32
/// rstd a row, gate and up, and the projection's input (shared by q, k and v) with the dropout's (seed, key). Forward and
/// backward run a kernel on CUDA (finetune_kernels.cu) and else torch ops that repeat the torch graph's gradient arithmetic
/// in fp32 (FineTune.Tests/Kernels/FusedOpsTrainingTests.cs compares both with the graph's gradients).
/// TorchSharp's managed functions hold memory longer than torch's own nodes do; <see cref="ManagedAutograd"/> undoes it
/// (the output's empty_like twin freed at once, the saved tensors released when backward has run, the gradients given
/// and handed back released then and at the next backward instead of at a garbage collection).
/// </summary>
public static unsafe partial class FusedOps
{
    /// <summary>For tests and measurements: the torch ops' own graph where gradients flow, instead of the fused functions (this thread only).</summary>
    [ThreadStatic] internal static bool PlainAutograd;

    /// <summary>For tests: how many fused functions this thread has applied (so a comparison with the torch graph can tell it ran them).</summary>
    [ThreadStatic] internal static long FusedCalls;

    /// <summary>For checks: how many <see cref="DropoutLinearShared"/> functions this thread has applied (they are among <see cref="FusedCalls"/>).</summary>
    [ThreadStatic] internal static long SharedDownCalls;

    private static bool FusedAutograd(params Tensor[] inputs) => !PlainAutograd && !NoGradient(inputs);

    /// <summary>A fused function's apply, through <see cref="ManagedAutograd.Apply"/> (its output's twin freed at once).</summary>
    private static Tensor ApplyFused(Func<Tensor> apply)
    {
        FusedCalls++;
        return ManagedAutograd.Apply(apply);
    }

    // ---------------------------------------------------------------- RMSNorm

    private sealed class RmsNormFunction : autograd.SingleTensorFunction<RmsNormFunction>
    {
        public override string Name => "FusedRmsNorm";

        // vars: x (..., H), weight (H) frozen, eps.
        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var x = (Tensor)vars[0];
            var weight = (Tensor)vars[1];
            var (y, rstd) = RmsNormAndRstd(x, weight, (double)vars[2]);
            ctx.save_for_backward([x, weight, rstd]);
            ctx.set_materialize_grads(false); // the output's twin is gone (ApplyFused); backward always gets a gradient
            return y;
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor dy)
        {
            var saved = ManagedAutograd.TakeSaved(ctx);
            using var x = saved[0];
            using var weight = saved[1];
            using var rstd = saved[2];
            var dx = RmsNormBackward(dy, x, weight, rstd);
            dy.Dispose();
            return ManagedAutograd.Returned(dx, null, null);                                     // no gradient for the frozen weight
        }
    }

    /// <summary>RMSNorm (as <see cref="RmsNorm"/>) and each row's rstd = rsqrt(mean(x²) + eps) in fp32, (..., 1).</summary>
    internal static (Tensor Y, Tensor Rstd) RmsNormAndRstd(Tensor x, Tensor weight, double eps)
    {
        long h = x.shape[^1];
        long[] rowShape = [.. x.shape[..^1], 1];
        if (CudaKernels.On(x.device) && Suffix(x.dtype) is string suffix && weight.dtype == x.dtype && x.is_contiguous()
            && weight.is_contiguous() && h <= int.MaxValue)
        {
            var y = empty_like(x);
            var rstd = empty(rowShape, ScalarType.Float32, x.device);
            ulong px = CudaKernels.Pointer(x), pw = CudaKernels.Pointer(weight), py = CudaKernels.Pointer(y), pr = CudaKernels.Pointer(rstd);
            int width = (int)h;
            float epsilon = (float)eps;
            void** args = stackalloc void*[] { &px, &pw, &py, &pr, &width, &epsilon };
            var (kernel, threads) = NormLaunch("rms_norm_rstd", h, px | pw | py);        // as RmsNorm's no-gradient kernel picks
            CudaKernels.Launch(x.device, $"{kernel}_{suffix}", x.numel() / Math.Max(1, h), threads, args);
            return (y, rstd);
        }
        using var scope = NewDisposeScope();
        var h32 = x.to(ScalarType.Float32);
        var r = rsqrt(h32.square().mean([-1], keepdim: true).Plus(eps));        // (..., 1); square is pow(x, 2)
        var normed = weight * (h32 * r).to(x.dtype);
        return (scope.MoveToOuter(normed), scope.MoveToOuter(r));
    }

    /// <summary>
    /// dx of RMSNorm from dy, x and rstd, as the torch ops' graph computes it: g = (dy·w) in x's dtype, then in fp32
    /// dx = g·r + (−½·Σ(g·x)·r³ / H)·2x, cast to x's dtype.
    /// </summary>
    internal static Tensor RmsNormBackward(Tensor dy, Tensor x, Tensor weight, Tensor rstd)
    {
        long h = x.shape[^1];
        if (CudaKernels.On(x.device) && Suffix(x.dtype) is string suffix && weight.dtype == x.dtype && dy.dtype == x.dtype
            && x.is_contiguous() && weight.is_contiguous() && rstd.is_contiguous() && h <= int.MaxValue)
        {
            using var dyc = dy.contiguous();
            var dx = empty_like(x);
            ulong pdy = CudaKernels.Pointer(dyc), px = CudaKernels.Pointer(x), pw = CudaKernels.Pointer(weight), pr = CudaKernels.Pointer(rstd), pdx = CudaKernels.Pointer(dx);
            int width = (int)h;
            void** args = stackalloc void*[] { &pdy, &px, &pw, &pr, &pdx, &width };
            var (kernel, threads) = NormLaunch("rms_norm_backward", h, pdy | px | pw | pdx);
            CudaKernels.Launch(x.device, $"{kernel}_{suffix}", x.numel() / Math.Max(1, h), threads, args);
            return dx;
        }
        using var scope = NewDisposeScope();
        var h32 = x.to(ScalarType.Float32);
        var g = (dy * weight).to(ScalarType.Float32);                             // mul's backward in x's dtype, then the cast's
        var dot = (g * h32).sum([-1], keepdim: true);                              // the gradient of rstd
        var dsq = (dot.Times(-0.5) * (rstd * rstd * rstd)).DividedBy(h);           // rsqrt's (r³ as pow(r, 3)), then mean's
        var result = (g * rstd).Plus(dsq * h32.Times(2.0)).to(x.dtype);            // (h·r)'s, plus pow's
        return scope.MoveToOuter(result);
    }

    // ---------------------------------------------------------------- SwiGLU

    private sealed class SiluMulFunction : autograd.SingleTensorFunction<SiluMulFunction>
    {
        public override string Name => "FusedSiluMul";

        // vars: gate, up (same shape and dtype), whether backward may write their gradients over them (SiluMul's gradientsInPlace).
        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var gate = (Tensor)vars[0];
            var up = (Tensor)vars[1];
            ctx.save_for_backward([gate, up]);
            ctx.save_data("inPlace", (bool)vars[2]);
            ctx.set_materialize_grads(false);
            return SiluMul(gate, up);                                              // gradients are off inside: kernel or torch ops
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor dy)
        {
            var saved = ManagedAutograd.TakeSaved(ctx);
            using var gate = saved[0];
            using var up = saved[1];
            var (dgate, dup) = SiluMulBackward(dy, gate, up, (bool)ctx.get_data("inPlace"));
            dy.Dispose();
            return ManagedAutograd.Returned(dgate, dup, null);
        }
    }

    /// <summary>
    /// The gradients of silu(gate)·up for gate and up, as the torch ops' graph computes them: dup = dy·silu(gate) and
    /// dgate = silu_backward(dy·up, gate) = (dy·up)·s·(1 + gate·(1 − s)) in fp32 with s = sigmoid(gate), in gate's dtype.
    /// <paramref name="inPlace"/>: the kernel writes them over gate and up (each thread reads its values before it writes
    /// them), which the caller no longer needs; the torch ops make new tensors either way.
    /// </summary>
    internal static (Tensor DGate, Tensor DUp) SiluMulBackward(Tensor dy, Tensor gate, Tensor up, bool inPlace = false)
    {
        if (CudaKernels.On(gate.device) && Suffix(gate.dtype) is string suffix && up.dtype == gate.dtype && dy.dtype == gate.dtype
            && gate.shape.SequenceEqual(up.shape) && dy.shape.SequenceEqual(gate.shape) && gate.is_contiguous() && up.is_contiguous())
        {
            using var dyc = dy.contiguous();
            var dgate = inPlace ? gate.alias() : empty_like(gate);
            var dup = inPlace ? up.alias() : empty_like(up);
            ulong pdy = CudaKernels.Pointer(dyc), pg = CudaKernels.Pointer(gate), pu = CudaKernels.Pointer(up), pdg = CudaKernels.Pointer(dgate), pdu = CudaKernels.Pointer(dup);
            long n = gate.numel();
            void** args = stackalloc void*[] { &pdy, &pg, &pu, &pdg, &pdu, &n };
            LaunchElementwise(gate.device, "silu_mul_backward", suffix, n, pdy | pg | pu | pdg | pdu, args);
            return (dgate, dup);
        }
        using var scope = NewDisposeScope();
        var upGrad = dy * nn.functional.silu(gate);
        var ds = (dy * up).to(ScalarType.Float32);
        var g = gate.to(ScalarType.Float32);
        var s = sigmoid(g);
        var gateGrad = (ds * s * (g * s.neg().Plus(1.0)).Plus(1.0)).to(gate.dtype); // 1 − s as −s + 1: the same rounding
        return (scope.MoveToOuter(gateGrad), scope.MoveToOuter(upGrad));
    }

    // ---------------------------------------------------------------- RoPE

    private sealed class RotaryFunction : autograd.SingleTensorFunction<RotaryFunction>
    {
        public override string Name => "FusedRotary";

        // vars: x (B, nH, T, hD), cos and signedSin (B|1, 1, T, hD) frozen. Nothing of x is kept: the gradient needs the tables alone.
        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var x = (Tensor)vars[0];
            var cos = (Tensor)vars[1];
            var signedSin = (Tensor)vars[2];
            ctx.save_for_backward([cos, signedSin]);
            ctx.set_materialize_grads(false);
            return Rotary(x, cos, signedSin);                                       // gradients are off inside: kernel or torch ops
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor dy)
        {
            var saved = ManagedAutograd.TakeSaved(ctx);
            using var cos = saved[0];
            using var signedSin = saved[1];
            var dx = RotaryBackward(dy, cos, signedSin);
            dy.Dispose();
            return ManagedAutograd.Returned(dx, null, null);                        // no gradients for the tables
        }
    }

    /// <summary>
    /// dx of RoPE (<see cref="Rotary"/>) from dy (B, nH, T, hD), as the torch ops' graph of x·cos + roll(x, hD/2)·signedSin
    /// computes it with the tables frozen: each product's gradient dy·table rounded to x's dtype, roll's sent back by
    /// roll(−hD/2), the two added as x's gradient buffer adds them (rounded once from fp32). So dx[k] = T(T(dy[k]·cos[k]) +
    /// T(dy[k′]·signedSin[k′])) with k′ = (k + hD/2) mod hD. The kernel's result is laid out (B, T, nH, hD), as the
    /// projection's output it goes back to.
    /// </summary>
    internal static Tensor RotaryBackward(Tensor dy, Tensor cos, Tensor signedSin)
    {
        if (CudaKernels.On(dy.device))
        {
            using var dyc = dy.stride(3) == 1 ? dy.alias() : dy.contiguous();       // the kernel reads any strides but hD's
            if (RotaryKernel("rotary_backward", dyc, cos, signedSin) is { } dx) return dx;
        }
        using var scope = NewDisposeScope();
        var fromCos = dy * cos;                                                     // (B, nH, T, hD)
        var fromRolled = (dy * signedSin).roll(-(dy.shape[^1] / 2), -1);            // roll's backward: roll by −shift
        return scope.MoveToOuter(fromCos.Plus(fromRolled));
    }

    // ---------------------------------------------------------------- LoRA dropout

    private sealed class DropoutFunction : autograd.SingleTensorFunction<DropoutFunction>
    {
        public override string Name => "DeviceSeededDropout";

        // vars: x, p, seed (1) int64 on x's device, key. Nothing of x is kept: backward draws the same mask again.
        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var seed = (Tensor)vars[2];
            ctx.save_for_backward([seed]);
            ctx.save_data("p", vars[1]);
            ctx.save_data("key", vars[3]);
            ctx.set_materialize_grads(false);
            return DropoutKernel((Tensor)vars[0], (double)vars[1], seed, (long)vars[3]);
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor dy)
        {
            double p = (double)ctx.get_data("p");
            long key = (long)ctx.get_data("key");
            var saved = ManagedAutograd.TakeSaved(ctx);
            using var seed = saved[0];
            var dx = DropoutKernel(dy, p, seed, key);
            dy.Dispose();
            return ManagedAutograd.Returned(dx, null, null, null);
        }
    }

    /// <summary>
    /// LoRA dropout with the mask drawn on the device from <paramref name="seed"/> ((1) int64 in device memory) and
    /// <paramref name="key"/> (finetune_kernels.cu, dropout_): the same (seed, key) gives the same mask, so a checkpointed
    /// layer's recompute and backward need nothing kept, and a CUDA graph that captured it draws new masks when the seed
    /// in memory changes. Null where the kernels are off on x's device (the caller takes torch's dropout).
    /// </summary>
    internal static Tensor? Dropout(Tensor x, double p, Tensor seed, long key)
    {
        if (!CudaKernels.On(x.device) || Suffix(x.dtype) is null || seed.device_index != x.device_index || seed.dtype != ScalarType.Int64) return null;
        if (NoGradient(x)) return DropoutKernel(x, p, seed, key);
        if (PlainAutograd) return DropoutWithTorch(x, p, seed, key);             // the torch ops' own graph, the same mask
        return ApplyFused(() => DropoutFunction.apply(x, p, seed, key));
    }

    private static Tensor DropoutKernel(Tensor x, double p, Tensor seed, long key)
    {
        using var xc = x.contiguous();
        var y = empty_like(xc);
        ulong px = CudaKernels.Pointer(xc), py = CudaKernels.Pointer(y), ps = CudaKernels.Pointer(seed);
        long n = xc.numel();
        float probability = (float)p, scale = (float)(1.0 / (1.0 - p));
        void** args = stackalloc void*[] { &px, &py, &ps, &key, &probability, &scale, &n };
        LaunchElementwise(x.device, "dropout", Suffix(x.dtype)!, n, px | py, args);
        return y;
    }

    // ---------------------------------------------------------------- LoRA dropout and A

    private sealed class DropoutLinearFunction : autograd.SingleTensorFunction<DropoutLinearFunction>
    {
        public override string Name => "DeviceSeededDropoutLinear";

        // vars: x (..., in), a (r, in), p, seed (1) int64 on x's device, key. Keeps x, a and the seed; not dropout(x), which
        // a's gradient needs: backward draws it again from (seed, key).
        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var x = (Tensor)vars[0];
            var a = (Tensor)vars[1];
            double p = (double)vars[2];
            var seed = (Tensor)vars[3];
            long key = (long)vars[4];
            ctx.save_for_backward([x, a, seed]);
            ctx.save_data("p", p);
            ctx.save_data("key", key);
            ctx.save_data("dx", x.requires_grad);
            ctx.save_data("da", a.requires_grad);
            ctx.set_materialize_grads(false);
            using var dropped = Dropped(x, p, seed, key);                           // (..., in), gone once multiplied
            return nn.functional.linear(dropped, a);                                // (..., r)
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor dy)
        {
            double p = (double)ctx.get_data("p");
            long key = (long)ctx.get_data("key");
            bool needsDx = (bool)ctx.get_data("dx"), needsDa = (bool)ctx.get_data("da");
            var saved = ManagedAutograd.TakeSaved(ctx);
            using var x = saved[0];
            using var a = saved[1];
            using var seed = saved[2];
            // linear's own backward on the rows its matmul folds (..., in) into: da = gᵀ·dropout(x) and g·a into dropout's
            // backward (the same mask and scale), the same calls in the same order as the graph of linear(dropout(x), a).
            using var g = dy.reshape(-1, a.shape[0]);                               // (N, r)
            var da = needsDa ? DownWeightGradient(g, x, a, p, seed, key) : null;
            var dx = needsDx ? DownInputGradient(g, x, a, p, seed, key) : null;
            dy.Dispose();
            return ManagedAutograd.Returned(dx, da, null, null, null);
        }
    }

    /// <summary>a's gradient gᵀ·dropout(x) (r, in), dropout(x) drawn again: linear's backward on the rows (N, in) its matmul folds x into.</summary>
    private static Tensor DownWeightGradient(Tensor g, Tensor x, Tensor a, double p, Tensor seed, long key)
    {
        using var dropped = Dropped(x, p, seed, key);                               // (..., in), drawn again
        return WeightGradientOf(g, dropped, a);
    }

    /// <summary>a's gradient gᵀ·input (r, in) for linear(input, a): linear's backward on the rows (N, in) its matmul folds the input into.</summary>
    private static Tensor WeightGradientOf(Tensor g, Tensor input, Tensor a)
    {
        using var rows = input.reshape(-1, a.shape[1]);                             // (N, in)
        using var gt = g.t();                                                       // (r, N)
        return gt.mm(rows);                                                         // (r, in)
    }

    /// <summary>x's gradient through linear(dropout(x), a): g·a (N, in) into dropout's backward (the same mask and scale), (..., in).</summary>
    private static Tensor DownInputGradient(Tensor g, Tensor x, Tensor a, double p, Tensor seed, long key)
    {
        using var rows = g.mm(a);                                                   // (N, in)
        using var grad = rows.view(x.shape);                                        // (..., in)
        return Dropped(grad, p, seed, key);
    }

    /// <summary>The dropout seed: int64 on the input's device (the kernel reads it there).</summary>
    private static void CheckDropoutSeed(Tensor seed, Tensor x, string parameter)
    {
        if (seed.dtype != ScalarType.Int64 || seed.device_type != x.device_type || seed.device_index != x.device_index)
            throw new ArgumentException($"The dropout seed must be an int64 tensor on the input's device ({x.device}); it is {seed.dtype} on {seed.device}.", parameter);
    }

    /// <summary>
    /// linear(dropout(x), a) (..., r) for LoRA's A with the mask of <see cref="Dropout"/>'s draw (seed, key). Where gradients
    /// flow, one function that keeps x instead of the dropped copy a's gradient needs: linear's graph kept that copy for
    /// every adapted projection (a value per input feature, projection and token), where x is shared by q, k and v and is
    /// otherwise kept once. Values and gradients equal those of <c>linear(Dropout(x, p, seed, key), a)</c> bit for bit: the
    /// same kernels and matmul calls. The mask comes from the kernel where it runs, else from torch ops that compute the
    /// same hash (<see cref="DropoutWithTorch"/>), which is also what PlainAutograd takes where gradients flow.
    /// </summary>
    internal static Tensor DropoutLinear(Tensor x, Tensor a, double p, Tensor seed, long key)
    {
        CheckDropoutSeed(seed, x, nameof(seed));
        if (FusedAutograd(x, a)) return ApplyFused(() => DropoutLinearFunction.apply(x, a, p, seed, key));
        using var dropped = NoGradient(x) ? Dropped(x, p, seed, key) : DropoutWithTorch(x, p, seed, key); // PlainAutograd: the torch ops' graph
        return nn.functional.linear(dropped, a);
    }

    // ---------------------------------------------------------------- LoRA dropout and A of projections of one input

    /// <summary>One projection's LoRA dropout draw: its probability and the (seed, key) of its mask (<see cref="DropoutLinear"/>).</summary>
    internal readonly record struct DropoutDraw(double P, Tensor Seed, long Key);

    private sealed class DropoutLinearSharedFunction : autograd.MultiTensorFunction<DropoutLinearSharedFunction>
    {
        public override string Name => "DeviceSeededDropoutLinearShared";

        // vars: x (..., in), a_0 … a_{n−1} (r_i, in), seed_0 … seed_{n−1} (1) int64 on x's device, p (double[n]), key (long[n]).
        // Keeps x once, the a's and the seeds; as DropoutLinearFunction per projection otherwise.
        public override List<Tensor> forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var p = (double[])vars[^2];
            var key = (long[])vars[^1];
            int n = key.Length;
            var x = (Tensor)vars[0];
            var a = vars[1..(1 + n)].Cast<Tensor>().ToArray();
            var seed = vars[(1 + n)..(1 + 2 * n)].Cast<Tensor>().ToArray();
            ctx.save_for_backward([x, .. a, .. seed]);
            ctx.save_data("p", p);
            ctx.save_data("key", key);
            ctx.save_data("dx", x.requires_grad);
            ctx.save_data("da", a.Select(t => t.requires_grad).ToArray());
            ctx.set_materialize_grads(false);                                      // an output nothing used gets no gradient: null
            var downs = new List<Tensor>(n);
            for (int i = 0; i < n; i++)
            {
                using var dropped = Dropped(x, p[i], seed[i], key[i]);              // (..., in), gone once multiplied
                downs.Add(nn.functional.linear(dropped, a[i]));                     // (..., r_i)
            }
            return downs;
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> dys)
        {
            var p = (double[])ctx.get_data("p");
            var key = (long[])ctx.get_data("key");
            bool needsDx = (bool)ctx.get_data("dx");
            var needsDa = (bool[])ctx.get_data("da");
            int n = key.Length;
            var saved = ManagedAutograd.TakeSaved(ctx);
            using var x = saved[0];
            var gradients = new Tensor?[1 + 2 * n + 2];                             // dx, da_0 … da_{n−1}; none for the seeds, p and key
            Tensor? dx = null;
            // The graph of n DropoutLinearFunctions runs their backwards last created first (autograd's ready queue takes the
            // highest sequence number), and x's gradient buffer adds each arriving dx to the sum so far: ((dx_{n−1} + dx_{n−2})
            // + …) + dx_0, the order here. Each da_i and dx_i are DropoutLinearFunction's calls: bit-equal to n such functions.
            for (int i = n - 1; i >= 0; i--)
            {
                using var a = saved[1 + i];
                using var seed = saved[1 + n + i];
                using var dy = dys[i];
                if (dy.IsInvalid) continue;                                         // that output got no gradient
                using var g = dy.reshape(-1, a.shape[0]);                           // (N, r)
                if (needsDa[i]) gradients[1 + i] = DownWeightGradient(g, x, a, p[i], seed, key[i]);
                if (needsDx)
                {
                    var part = DownInputGradient(g, x, a, p[i], seed, key[i]);
                    if (dx is null) dx = part;
                    else
                    {
                        dx.add_(part);
                        part.Dispose();
                    }
                }
            }
            gradients[0] = dx;
            return ManagedAutograd.Returned(gradients);
        }
    }

    /// <summary>
    /// <see cref="DropoutLinear"/> of each (a_i, draws_i) on one x, as projections of one input (an attention layer's q, k and
    /// v): (..., r_i) each. Where gradients flow to all of them, one function instead of one per projection (a managed
    /// function costs host time in forward and in backward, and a training step is bound by the host): x kept once, each
    /// projection's dropped copy drawn again in backward. Outputs and a's gradients equal those of the per-projection
    /// functions bit for bit (the same calls), and x's gradient too where nothing else adds into it in between (the sum
    /// in the order those functions' gradients arrive, the last projection's first); an output that gets no gradient
    /// gives its a none. Otherwise (PlainAutograd, or gradients that reach only some projections) one
    /// <see cref="DropoutLinear"/> each, in order.
    /// </summary>
    internal static Tensor[] DropoutLinearShared(Tensor x, Tensor[] a, DropoutDraw[] draws)
    {
        if (a.Length != draws.Length) throw new ArgumentException($"{a.Length} LoRA A weights for {draws.Length} dropout draws.", nameof(draws));
        foreach (var draw in draws) CheckDropoutSeed(draw.Seed, x, nameof(draws));
        if (a.Length < 2 || !a.All(t => FusedAutograd(x, t)))
            return [.. a.Select((t, i) => DropoutLinear(x, t, draws[i].P, draws[i].Seed, draws[i].Key))];
        object[] vars = [x, .. a, .. draws.Select(d => d.Seed), draws.Select(d => d.P).ToArray(), draws.Select(d => d.Key).ToArray()];
        FusedCalls++;
        SharedDownCalls++;
        return ManagedAutograd.Apply(() => DropoutLinearSharedFunction.apply(vars));
    }

    // ---------------------------------------------------------------- SwiGLU's product into the down projection's LoRA A

    private sealed class SiluMulDropoutLinearFunction : autograd.MultiTensorFunction<SiluMulDropoutLinearFunction>
    {
        public override string Name => "FusedSiluMulDropoutLinear";

        // vars: gate, up (..., I), a (r, I), seed (1) int64 on gate's device, p, key, whether backward may write gate's and
        // up's gradients over them. Keeps gate, up, a and the seed: h = silu(gate)·up and its dropped copy are made again in
        // backward, from what SiLU·up's own backward needs anyway.
        public override List<Tensor> forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var gate = (Tensor)vars[0];
            var up = (Tensor)vars[1];
            var a = (Tensor)vars[2];
            var seed = (Tensor)vars[3];
            double p = (double)vars[4];
            long key = (long)vars[5];
            ctx.save_for_backward([gate, up, a, seed]);
            ctx.save_data("p", p);
            ctx.save_data("key", key);
            ctx.save_data("inPlace", (bool)vars[6]);
            ctx.save_data("dgu", gate.requires_grad || up.requires_grad);
            ctx.save_data("da", a.requires_grad);
            ctx.set_materialize_grads(false);                                      // an output nothing used gets no gradient: null
            var h = SiluMul(gate, up);                                             // (..., I): gradients are off inside, kernel or torch ops
            using var dropped = Dropped(h, p, seed, key);                          // (..., I), gone once multiplied
            return [h, nn.functional.linear(dropped, a)];                          // h for the base projection, (..., r) for LoRA's B
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, List<Tensor> dys)
        {
            double p = (double)ctx.get_data("p");
            long key = (long)ctx.get_data("key");
            bool needsDgu = (bool)ctx.get_data("dgu"), needsDa = (bool)ctx.get_data("da");
            var saved = ManagedAutograd.TakeSaved(ctx);
            using var gate = saved[0];
            using var up = saved[1];
            using var a = saved[2];
            using var seed = saved[3];
            using var dh = dys[0];
            using var dDown = dys[1];
            Tensor? da = null, dgate = null, dup = null, fromLora = null;
            if (!dDown.IsInvalid)
            {
                using var g = dDown.reshape(-1, a.shape[0]);                        // (N, r)
                if (needsDa)
                {
                    using var dropped = SiluMulDropped(gate, up, p, seed, key);     // (..., I), drawn again
                    da = WeightGradientOf(g, dropped, a);                           // (r, I)
                }
                if (needsDgu) fromLora = DownInputGradient(g, gate, a, p, seed, key); // (..., I)
            }
            // h's gradient is the base projection's part plus the LoRA path's, as h's gradient buffer adds them (one add, in
            // either order the same); then SiLU·up's backward, as SiluMulFunction's.
            if (needsDgu && !(dh.IsInvalid && fromLora is null))
            {
                using var total = dh.IsInvalid ? fromLora!.alias() : fromLora is null ? dh.alias() : dh.add(fromLora);
                (dgate, dup) = SiluMulBackward(total, gate, up, (bool)ctx.get_data("inPlace")); // a's gradient and fromLora are made
            }
            fromLora?.Dispose();
            return ManagedAutograd.Returned(dgate, dup, da, null, null, null, null);
        }
    }

    /// <summary>
    /// (h, A(dropout(h))) with h = silu(gate)·up: SwiGLU's product (..., I) for the down projection's base matmul, and
    /// linear(dropout(h), a) (..., r) for its LoRA B, the mask of <see cref="Dropout"/>'s draw (seed, key). Where gradients
    /// flow, one function that keeps gate and up (SiLU·up's backward needs them) and neither h nor its dropped copy: a's
    /// gradient takes the copy made again from gate and up in one kernel (silu_mul_dropout_). SiLU·up and
    /// <see cref="DropoutLinear"/> kept h besides: a third (..., I) tensor a layer, 23% of what a Qwen2-7B layer keeps with LoRA on
    /// all seven projections (18,944 of about 82,900 values a token).
    /// Values and gradients equal those of <c>DropoutLinear(SiluMul(gate, up), a, p, seed, key)</c> bit for bit. Otherwise
    /// (no gradient, PlainAutograd) those two.
    /// </summary>
    internal static (Tensor H, Tensor Down) SiluMulDropoutLinear(Tensor gate, Tensor up, Tensor a, double p, Tensor seed, long key,
        bool gradientsInPlace = false)
    {
        CheckDropoutSeed(seed, gate, nameof(seed));
        if (FusedAutograd(gate, up, a) && up.dtype == gate.dtype && gate.shape.SequenceEqual(up.shape))
        {
            FusedCalls++;
            var outputs = ManagedAutograd.Apply(() => SiluMulDropoutLinearFunction.apply(gate, up, a, seed, p, key, gradientsInPlace));
            return (outputs[0], outputs[1]);
        }
        var h = SiluMul(gate, up, gradientsInPlace);
        return (h, DropoutLinear(h, a, p, seed, key));
    }

    /// <summary>dropout(silu(gate)·up) with the mask of (seed, key), no graph: one kernel where it runs (bit for bit the two), else the two.</summary>
    internal static Tensor SiluMulDropped(Tensor gate, Tensor up, double p, Tensor seed, long key)
    {
        if (CudaKernels.On(gate.device) && Suffix(gate.dtype) is string suffix && up.dtype == gate.dtype && gate.shape.SequenceEqual(up.shape)
            && gate.is_contiguous() && up.is_contiguous())
        {
            var y = empty_like(gate);
            ulong pg = CudaKernels.Pointer(gate), pu = CudaKernels.Pointer(up), py = CudaKernels.Pointer(y), ps = CudaKernels.Pointer(seed);
            long n = gate.numel();
            float probability = (float)p, scale = (float)(1.0 / (1.0 - p));
            void** args = stackalloc void*[] { &pg, &pu, &py, &ps, &key, &probability, &scale, &n };
            LaunchElementwise(gate.device, "silu_mul_dropout", suffix, n, pg | pu | py, args);
            return y;
        }
        using var _ = no_grad();
        using var h = SiluMul(gate, up);
        return Dropped(h, p, seed, key);
    }

    /// <summary>The device-seeded dropout of x without a graph: the kernel where it runs, else its torch-op fallback.</summary>
    private static Tensor Dropped(Tensor x, double p, Tensor seed, long key) =>
        CudaKernels.On(x.device) && Suffix(x.dtype) is not null ? DropoutKernel(x, p, seed, key) : DropoutWithTorch(x, p, seed, key);

    /// <summary>
    /// The dropout kernel's result with torch ops (its fallback, and what the kernel is checked against): where kept
    /// (<see cref="DropoutKeep"/>) x·scale rounded from fp32 to x's dtype, scale = 1/(1 − p) in fp32; elsewhere 0. Differentiable:
    /// its graph's gradient is the same function of the incoming gradient, as the kernel's backward.
    /// </summary>
    internal static Tensor DropoutWithTorch(Tensor x, double p, Tensor seed, long key)
    {
        using var scope = NewDisposeScope();
        var keep = DropoutKeep(seed, key, x.numel(), p).view(x.shape);
        float scale = (float)(1.0 / (1.0 - p));                                    // the kernel's fp32 scale
        var scaled = x.to(ScalarType.Float32).Times(scale).to(x.dtype);
        var zero = zeros([], x.dtype, x.device);
        return scope.MoveToOuter(where(keep, scaled, zero));
    }

    /// <summary>
    /// (n) bool: finetune_kernels.cu's dropout mask for draw (seed, key) with torch's int64 ops, read from the seed tensor on
    /// its device (no wait for it): with h = splitmix64(splitmix64(seed ^ splitmix64(key)) + i / 2), one hash for each pair of
    /// elements, the even element i is kept where h's top 24 bits (63..40), the odd one where its bits 31..8, over 2^24 in
    /// fp32, are at least p in fp32; that is, where they are at least ⌈p·2^24⌉. In place where it can: a few int64 values an
    /// element at a time.
    /// </summary>
    internal static Tensor DropoutKeep(Tensor seed, long key, long n, double p)
    {
        using var scope = NewDisposeScope();
        using var mixedKey = tensor((long)DropoutDraws.Mix((ulong)key));        // 0-dim on the CPU: a scalar operand on any device
        var stream = seed.bitwise_xor(mixedKey);                                 // (1)
        SplitMix64InPlace(stream);
        using var pairs = ((n + 1) / 2).ToScalar();
        var hash = arange(pairs, ScalarType.Int64, seed.device);                 // (⌈n/2⌉): i / 2
        hash.add_(stream);
        SplitMix64InPlace(hash);
        var odd = hash.clone();
        ShiftRightLogicalInPlace(hash, 40);                                      // bits 63..40: the even elements'
        ShiftRightLogicalInPlace(odd, 8);
        using var low24 = tensor(0xFFFFFFL);
        odd.bitwise_and_(low24);                                                 // bits 31..8: the odd elements'
        var bits = stack([hash, odd], 1).view(-1).narrow(0, 0, n);              // (n): even, odd, even, ...
        using var threshold = ((long)Math.Ceiling((double)(float)p * 16777216.0)).ToScalar();
        return scope.MoveToOuter(bits.ge(threshold));
    }

    // ---------------------------------------------------------------- Cross-entropy

    /// <summary>
    /// Each row's cross-entropy of <paramref name="logits"/> (n, V), a chunk's lm_head output, against
    /// <paramref name="targets"/> (n) int64, and the rows' gradient for <paramref name="upstream"/> (0-dim fp32: what backward
    /// brings to the loss sum) written over the logits, in one kernel (cross_entropy_grad_): as torch's fp32 log_softmax,
    /// nll_loss and their backward compute them, the loss within a few fp32 ulps and each gradient within one rounding step
    /// of the logits' dtype (only the order of the sum of exponentials differs). A target of -100 is ignored (loss and
    /// gradient 0). Returns the rows' losses (n) fp32; null where no kernel runs (the caller takes torch's ops). The torch ops
    /// hold an fp32 copy of the logits, its log-softmax and their gradient at once (3.5 fp32 chunks at their peak, at the end
    /// of forward when every layer's activations are held); this holds the 16-bit logits alone.
    /// </summary>
    internal static Tensor? CrossEntropyGradientInPlace(Tensor logits, Tensor targets, Tensor upstream)
    {
        if (!CudaKernels.On(logits.device) || Suffix(logits.dtype) is not string suffix || logits.dim() != 2 || !logits.is_contiguous()
            || targets.dtype != ScalarType.Int64 || targets.numel() != logits.shape[0] || !targets.is_contiguous()
            || upstream.dtype != ScalarType.Float32 || upstream.numel() != 1 || !CudaKernels.SameDevice(upstream, logits)
            || logits.shape[1] > int.MaxValue || logits.shape[0] == 0)
            return null;
        var loss = empty(logits.shape[0], ScalarType.Float32, logits.device);
        ulong px = CudaKernels.Pointer(logits), pt = CudaKernels.Pointer(targets), pu = CudaKernels.Pointer(upstream), pl = CudaKernels.Pointer(loss);
        int v = (int)logits.shape[1];
        int wide = v % 16 == 0 && px % 16 == 0 ? 1 : 0;                          // each row's start then 16-byte aligned too
        void** args = stackalloc void*[] { &px, &pt, &pu, &pl, &v, &wide };
        CudaKernels.Launch(logits.device, $"cross_entropy_grad_{suffix}", logits.shape[0], 1024, args);
        return loss;
    }

    /// <summary>splitmix64's output function on int64 values, in place (two's complement: the wrapping sums and products are the uint64 ones).</summary>
    private static void SplitMix64InPlace(Tensor z)
    {
        using var increment = unchecked((long)0x9E3779B97F4A7C15ul).ToScalar();
        using var first = unchecked((long)0xBF58476D1CE4E5B9ul).ToScalar();
        using var second = unchecked((long)0x94D049BB133111EBul).ToScalar();
        z.add_(increment);
        XorShiftRightInPlace(z, 30);
        z.mul_(first);
        XorShiftRightInPlace(z, 27);
        z.mul_(second);
        XorShiftRightInPlace(z, 31);
    }

    /// <summary>z ^= z >>> bits on int64 values.</summary>
    private static void XorShiftRightInPlace(Tensor z, int bits)
    {
        using var shift = tensor((long)bits);                                   // 0-dim: TorchSharp's bitwise ops take tensors only
        using var low = tensor((1L << (64 - bits)) - 1);
        using var shifted = z.bitwise_right_shift(shift);
        shifted.bitwise_and_(low);
        z.bitwise_xor_(shifted);
    }

    /// <summary>z >>>= bits on int64 values: the arithmetic shift with the copied sign bits masked off.</summary>
    private static void ShiftRightLogicalInPlace(Tensor z, int bits)
    {
        using var shift = tensor((long)bits);
        using var low = tensor((1L << (64 - bits)) - 1);
        z.bitwise_right_shift_(shift);
        z.bitwise_and_(low);
    }
}
