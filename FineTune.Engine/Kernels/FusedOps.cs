using FineTune.Engine.Backend;
using FineTune.Engine.Adapters;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Kernels;

/// <summary>
/// The operations that have a kernel of their own (finetune_kernels.cu), each with its torch-op fallback. A kernel runs
/// when <see cref="CudaKernels.On"/> says so, the tensors are CUDA fp32/bf16/fp16 in the layout it reads, and no
/// gradient has to flow through the result (the kernels build no autograd graph: they serve generation, the
/// no-gradient forward of a checkpointed layer and the frozen NF4 weights); otherwise the fallback runs. Where gradients
/// flow, RMSNorm, SiLU·up and RoPE run as autograd functions of their own (FusedOps.Training.cs), kernels inside on CUDA.
/// Bit-equal to the fallback: NF4 dequantization, SiLU·up, RoPE (same fp32 arithmetic, same roundings).
/// Within rounding: RMSNorm (the fp32 sum of squares is added in another order) and the NF4 matrix-vector product
/// (fp32 dot products in another order than cuBLAS): FineTune.Tests/Kernels/FusedOpsTests.cs states the bounds.
/// </summary>
public static unsafe partial class FusedOps
{
    private const int Threads = 256;

    /// <summary>Kernel name suffix for a dtype, or null where there is no kernel.</summary>
    private static string? Suffix(ScalarType dtype) => dtype switch
    {
        ScalarType.Float32 => "f32",
        ScalarType.BFloat16 => "bf16",
        ScalarType.Float16 => "f16",
        _ => null,
    };

    private static bool NoGradient(params Tensor[] inputs) => !is_grad_enabled() || inputs.All(t => !t.requires_grad);

    private static bool Aligned(Tensor t) => CudaKernels.Pointer(t) % 16 == 0;

    // ---------------------------------------------------------------- NF4

    /// <summary>The NF4 weight in <paramref name="dtype"/> in one pass (absmaxes, double-quantized or not, included); null when no kernel applies.</summary>
    internal static Tensor? Nf4Dequantize(Nf4Data data, ScalarType dtype)
    {
        if (!CudaKernels.On(data.Packed.device) || Suffix(dtype) is not string suffix || !data.Packed.is_contiguous()) return null;
        long n = data.NumElements;
        using var output = empty([n], dtype, data.Packed.device);
        LaunchNf4Dequantize(data, suffix, output);
        // The caller owns the view alone: a flat handle left to the finalizer would keep a whole weight's memory.
        return output.view(data.Shape);
    }

    /// <summary>
    /// The NF4 weight dequantized into <paramref name="output"/>: contiguous, as many values, 16-byte aligned (a slice of a
    /// buffer that holds several weights, for one matmul over them). False, with nothing written, where no kernel applies.
    /// </summary>
    internal static bool Nf4DequantizeInto(Nf4Data data, Tensor output)
    {
        if (!CudaKernels.On(data.Packed.device) || Suffix(output.dtype) is not string suffix || !data.Packed.is_contiguous()
            || !output.is_contiguous() || output.numel() != data.NumElements || !Aligned(output) || output.device_index != data.Packed.device_index)
            return false;
        LaunchNf4Dequantize(data, suffix, output);
        return true;
    }

    private static void LaunchNf4Dequantize(Nf4Data data, string suffix, Tensor output)
    {
        long threads = (data.NumElements + 15) / 16;                            // 16 values a thread
        LaunchNf4(data, $"nf4_dequantize_{suffix}", (threads + Threads - 1) / Threads, output, extra: null);
    }

    /// <summary>
    /// x·dequant(W)ᵀ for a single row x (..., in) without dequantizing W into memory: batch-1 generation with a 4-bit
    /// base. Null when no kernel applies (more than one row, gradients, in not a multiple of 64, other dtypes).
    /// </summary>
    internal static Tensor? Nf4MatVec(Tensor x, Nf4Data weight)
    {
        long outFeatures = weight.Shape[0], inFeatures = weight.Shape[1];
        if (!CudaKernels.On(x.device) || Suffix(x.dtype) is not string suffix || x.device_index != weight.Packed.device_index || x.numel() != inFeatures || inFeatures % 64 != 0
            || !x.is_contiguous() || !Aligned(x) || !NoGradient(x) || !weight.Packed.is_contiguous() || outFeatures > int.MaxValue)
            return null;
        long[] shape = [.. x.shape[..^1], outFeatures];
        var y = empty(shape, x.dtype, x.device);
        int rowsPerBlock = Threads / 32;
        LaunchNf4(weight, $"nf4_matvec_{suffix}", (outFeatures + rowsPerBlock - 1) / rowsPerBlock, y, (x, (int)inFeatures, (int)outFeatures));
        return y;
    }

    private static void LaunchNf4(Nf4Data data, string kernel, long blocks, Tensor output, (Tensor X, int In, int Out)? extra)
    {
        var table = Nf4.DynamicMapTable(data.Packed.device);
        ulong packed = CudaKernels.Pointer(data.Packed);
        ulong absmax = data.Absmax is null ? 0 : CudaKernels.Pointer(data.Absmax);
        ulong codes = data.AbsmaxCodes is null ? 0 : CudaKernels.Pointer(data.AbsmaxCodes);
        ulong nested = data.NestedAbsmax is null ? 0 : CudaKernels.Pointer(data.NestedAbsmax);
        ulong offset = data.Offset is null ? 0 : CudaKernels.Pointer(data.Offset);
        ulong map = CudaKernels.Pointer(table);
        ulong y = CudaKernels.Pointer(output);
        long n = data.NumElements;
        if (extra is { } mv)
        {
            ulong x = CudaKernels.Pointer(mv.X);
            int inFeatures = mv.In, outFeatures = mv.Out;
            void** args = stackalloc void*[] { &packed, &absmax, &codes, &nested, &offset, &map, &x, &y, &inFeatures, &outFeatures };
            CudaKernels.Launch(output.device, kernel, blocks, Threads, args);
        }
        else
        {
            void** args = stackalloc void*[] { &packed, &absmax, &codes, &nested, &offset, &map, &y, &n };
            CudaKernels.Launch(output.device, kernel, blocks, Threads, args);
        }
        GC.KeepAlive(table);
    }

    // ---------------------------------------------------------------- RMSNorm

    /// <summary>
    /// Which of an RMSNorm kernel's two forms runs on rows of width <paramref name="h"/>, and its block size: 16 values a
    /// thread (<paramref name="kernel"/>16_, vector loads, a block of h/16 threads, at most 1024) where h is a multiple of
    /// 16 and every address (<paramref name="addresses"/>: the tensors' pointers OR-ed) is 16-byte aligned, else one value
    /// a thread in blocks of 256 or 1024. Every RMSNorm kernel picks the same way from the same widths and addresses, so
    /// the sums of squares add in one order in the no-gradient pass, the training pass, a checkpointed layer's recompute
    /// and the decode fold. On a 7B layer (2,048 rows of 3,584) the one-value form read and wrote at 1.1-1.2 TB/s.
    /// </summary>
    internal static (string Kernel, int Threads) NormLaunch(string kernel, long h, ulong addresses) =>
        h % 16 == 0 && addresses % 16 == 0
            ? ($"{kernel}16", (int)Math.Min(1024, (h / 16 + 31) / 32 * 32))
            : (kernel, h >= 1024 ? 1024 : 256);

    /// <summary>
    /// Launches an elementwise kernel over <paramref name="n"/> values in one of its two forms: 16 values a thread with
    /// 16-byte accesses (<paramref name="kernel"/>16_) where n is a multiple of 16 and every address (<paramref name="addresses"/>:
    /// the tensors' pointers OR-ed) is 16-byte aligned (the MLP's always are), else one value a thread.
    /// </summary>
    internal static void LaunchElementwise(Device device, string kernel, string suffix, long n, ulong addresses, void** args)
    {
        bool wide = n % 16 == 0 && addresses % 16 == 0;
        long threads = wide ? n / 16 : n;
        CudaKernels.Launch(device, wide ? $"{kernel}16_{suffix}" : $"{kernel}_{suffix}", (threads + Threads - 1) / Threads, Threads, args);
    }

    /// <summary>HF's RMSNorm: weight * (x / sqrt(mean(x²) + eps)) normalised in fp32 and cast back before the weight.</summary>
    public static Tensor RmsNorm(Tensor x, Tensor weight, double eps)
    {
        long h = x.shape[^1];
        if (CudaKernels.On(x.device) && Suffix(x.dtype) is string suffix && weight.dtype == x.dtype && x.is_contiguous()
            && weight.is_contiguous() && NoGradient(x, weight) && h <= int.MaxValue)
        {
            var y = empty_like(x);
            ulong px = CudaKernels.Pointer(x), pw = CudaKernels.Pointer(weight), py = CudaKernels.Pointer(y);
            int width = (int)h;
            float epsilon = (float)eps;
            void** args = stackalloc void*[] { &px, &pw, &py, &width, &epsilon };
            var (kernel, threads) = NormLaunch("rms_norm", h, px | pw | py);
            CudaKernels.Launch(x.device, $"{kernel}_{suffix}", x.numel() / Math.Max(1, h), threads, args);
            return y;
        }
        // Where gradients flow into x alone (the weight frozen, as in LoRA): the fused function (FusedOps.Training.cs).
        if (FusedAutograd(x) && !weight.requires_grad)
            return ApplyFused(() => RmsNormFunction.apply(x, weight, eps));
        return RmsNormWithTorch(x, weight, eps);
    }

    internal static Tensor RmsNormWithTorch(Tensor x, Tensor weight, double eps)
    {
        using var scope = NewDisposeScope();
        var h = x.to(ScalarType.Float32);
        var variance = h.pow(2).mean([-1], keepdim: true);
        h = h * rsqrt(variance.Plus(eps)); // owned Scalars: see ScalarArithmetic
        return scope.MoveToOuter(weight * h.to(x.dtype));
    }

    // ---------------------------------------------------------------- SwiGLU

    /// <summary>
    /// silu(gate) * up, the middle of the SwiGLU MLP. <paramref name="gradientsInPlace"/>: gate and up are fresh tensors that
    /// nothing else reads after this nor keeps for backward (the MLP's projections), so backward's kernel writes their
    /// gradients over them instead of into two new (..., I) tensors: the last layer's backward runs when every layer's
    /// activations are held, and these two were its largest new ones.
    /// </summary>
    public static Tensor SiluMul(Tensor gate, Tensor up, bool gradientsInPlace = false)
    {
        if (CudaKernels.On(gate.device) && Suffix(gate.dtype) is string suffix && up.dtype == gate.dtype && gate.shape.SequenceEqual(up.shape)
            && gate.is_contiguous() && up.is_contiguous() && NoGradient(gate, up))
        {
            var y = empty_like(gate);
            ulong pg = CudaKernels.Pointer(gate), pu = CudaKernels.Pointer(up), py = CudaKernels.Pointer(y);
            long n = gate.numel();
            void** args = stackalloc void*[] { &pg, &pu, &py, &n };
            LaunchElementwise(gate.device, "silu_mul", suffix, n, pg | pu | py, args);
            return y;
        }
        if (FusedAutograd(gate, up) && up.dtype == gate.dtype && gate.shape.SequenceEqual(up.shape))
            return ApplyFused(() => SiluMulFunction.apply(gate, up, gradientsInPlace)); // FusedOps.Training.cs
        using var scope = NewDisposeScope();
        return scope.MoveToOuter(nn.functional.silu(gate) * up);
    }

    // ---------------------------------------------------------------- RoPE

    /// <summary>
    /// x·cos + rotate_half(x)·sin for x (B, nH, T, hD) with the tables of AttentionOps.RotaryTables (cos and the signed
    /// sin, (B|1, 1, T, hD)); the kernel's result is contiguous (B, nH, T, hD). Where gradients flow into x (the tables
    /// frozen), one autograd function of its own (FusedOps.Training.cs) instead of the torch ops' graph of four nodes.
    /// </summary>
    public static Tensor Rotary(Tensor x, Tensor cos, Tensor signedSin)
    {
        if (NoGradient(x, cos, signedSin) && RotaryKernel("rotary", x, cos, signedSin) is { } y) return y;
        if (FusedAutograd(x) && !cos.requires_grad && !signedSin.requires_grad && RotaryShapes(x, cos, signedSin))
            return ApplyFused(() => RotaryFunction.apply(x, cos, signedSin));  // FusedOps.Training.cs
        return RotaryWithTorch(x, cos, signedSin);
    }

    /// <summary>The torch ops of <see cref="Rotary"/>: T(x·cos) + T(roll(x, hD/2)·signedSin), rotate_half(x)·sin as AttentionOps.ApplyRotary says.</summary>
    internal static Tensor RotaryWithTorch(Tensor x, Tensor cos, Tensor signedSin)
    {
        using var scope = NewDisposeScope();
        var rotated = (x * cos).Plus(x.roll(x.shape[^1] / 2, -1) * signedSin); // (B, nH, T, hD)
        return scope.MoveToOuter(rotated);
    }

    /// <summary>x (B, nH, T, hD) with an even hD, and cos and signedSin of its dtype, (B|1, 1, T, hD) both.</summary>
    private static bool RotaryShapes(Tensor x, Tensor cos, Tensor signedSin) =>
        x.dim() == 4 && cos.dim() == 4 && cos.dtype == x.dtype && signedSin.dtype == x.dtype && cos.shape.SequenceEqual(signedSin.shape)
        && cos.shape[1] == 1 && cos.shape[2] == x.shape[2] && cos.shape[3] == x.shape[3] && (cos.shape[0] == x.shape[0] || cos.shape[0] == 1)
        && x.shape[3] % 2 == 0;

    /// <summary>
    /// <paramref name="kernel"/>_ (rotary_, or rotary_backward_ on a gradient) of x (B, nH, T, hD) in the layout it reads
    /// (hD contiguous, any other strides; the tables (B|1, 1, T, hD) with one layout and hD contiguous): a (B, nH, T, hD)
    /// view of values laid out (B, T, nH, hD). That is flash attention's layout, so its output (allocated like q) reshapes
    /// to (B, T, nH·hD) without a copy, and the projections' layout, so the gradient reaches them without one (7B: four
    /// copies of q's size a layer before). Null where it does not run.
    /// </summary>
    private static Tensor? RotaryKernel(string kernel, Tensor x, Tensor cos, Tensor signedSin)
    {
        if (!CudaKernels.On(x.device) || Suffix(x.dtype) is not string suffix || !RotaryShapes(x, cos, signedSin) || x.stride(3) != 1
            || cos.stride(3) != 1 || !cos.stride().SequenceEqual(signedSin.stride()) || x.numel() / 2 > uint.MaxValue)
            return null;
        int heads = (int)x.shape[1], tokens = (int)x.shape[2], d = (int)x.shape[3];
        using var rows = empty([x.shape[0], tokens, heads, d], x.dtype, x.device);     // (B, T, nH, hD)
        ulong px = CudaKernels.Pointer(x), pc = CudaKernels.Pointer(cos), ps = CudaKernels.Pointer(signedSin), py = CudaKernels.Pointer(rows);
        long xb = x.stride(0), xh = x.stride(1), xt = x.stride(2);
        long cb = cos.shape[0] == 1 ? 0 : cos.stride(0), ct = cos.stride(2);
        long pairs = x.numel() / 2;                                                    // the kernel's index arithmetic is 32-bit
        void** args = stackalloc void*[] { &px, &pc, &ps, &py, &heads, &tokens, &d, &xb, &xh, &xt, &cb, &ct, &pairs };
        CudaKernels.Launch(x.device, $"{kernel}_{suffix}", (pairs + Threads - 1) / Threads, Threads, args);
        return rows.transpose(1, 2);                                                   // (B, nH, T, hD)
    }
}
