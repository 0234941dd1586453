using FineTune.Engine.Backend;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Kernels;

/// <summary>
/// Training's RMSNorm and SiLU·up as autograd functions of their own, for the memory a step holds between forward and
/// backward. The torch ops' graph keeps per token and norm HF's fp32 copy of the input (4 bytes a value; the ops
/// after the upcast save it), and per MLP gate, silu(gate) and up (three 16-bit values per intermediate unit); these
/// functions keep the 16-bit input and one fp32 rstd a row, and gate and up. Forward and backward run a kernel on CUDA
/// (finetune_kernels.cu) and else torch ops that repeat the torch graph's gradient arithmetic in fp32
/// (FineTune.Tests/Kernels/FusedOpsTrainingTests.cs compares both with the graph's gradients).
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
            CudaKernels.Launch(x.device, $"rms_norm_rstd_{suffix}", x.numel() / Math.Max(1, h), h >= 1024 ? 1024 : 256, args);
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
            CudaKernels.Launch(x.device, $"rms_norm_backward_{suffix}", x.numel() / Math.Max(1, h), h >= 1024 ? 1024 : 256, args);
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

        // vars: gate, up (same shape and dtype).
        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var gate = (Tensor)vars[0];
            var up = (Tensor)vars[1];
            ctx.save_for_backward([gate, up]);
            ctx.set_materialize_grads(false);
            return SiluMul(gate, up);                                              // gradients are off inside: kernel or torch ops
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor dy)
        {
            var saved = ManagedAutograd.TakeSaved(ctx);
            using var gate = saved[0];
            using var up = saved[1];
            var (dgate, dup) = SiluMulBackward(dy, gate, up);
            dy.Dispose();
            return ManagedAutograd.Returned(dgate, dup);
        }
    }

    /// <summary>
    /// The gradients of silu(gate)·up for gate and up, as the torch ops' graph computes them: dup = dy·silu(gate) and
    /// dgate = silu_backward(dy·up, gate) = (dy·up)·s·(1 + gate·(1 − s)) in fp32 with s = sigmoid(gate), in gate's dtype.
    /// </summary>
    internal static (Tensor DGate, Tensor DUp) SiluMulBackward(Tensor dy, Tensor gate, Tensor up)
    {
        if (CudaKernels.On(gate.device) && Suffix(gate.dtype) is string suffix && up.dtype == gate.dtype && dy.dtype == gate.dtype
            && gate.shape.SequenceEqual(up.shape) && dy.shape.SequenceEqual(gate.shape) && gate.is_contiguous() && up.is_contiguous())
        {
            using var dyc = dy.contiguous();
            var dgate = empty_like(gate);
            var dup = empty_like(up);
            ulong pdy = CudaKernels.Pointer(dyc), pg = CudaKernels.Pointer(gate), pu = CudaKernels.Pointer(up), pdg = CudaKernels.Pointer(dgate), pdu = CudaKernels.Pointer(dup);
            long n = gate.numel();
            void** args = stackalloc void*[] { &pdy, &pg, &pu, &pdg, &pdu, &n };
            CudaKernels.Launch(gate.device, $"silu_mul_backward_{suffix}", (n + Threads - 1) / Threads, Threads, args);
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
        if (!FusedAutograd(x)) return DropoutKernel(x, p, seed, key);
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
        CudaKernels.Launch(x.device, $"dropout_{Suffix(x.dtype)}", (n + 255) / 256, 256, args);
        return y;
    }
}
