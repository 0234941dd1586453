using FineTune.Engine.Backend;
using static TorchSharp.torch;

namespace FineTune.Engine.Kernels;

/// <summary>
/// The kernels of a one-token decode step (the DEFINE_DECODE_KERNELS of finetune_kernels.cu). Decode at batch 1 is
/// bound by the host's time per launched op (about 11 µs each on an H200 against a GPU that waits for it), so these
/// fold several torch ops into one launch; each is bit-equal to the ops it replaces, which run where it does not apply.
/// </summary>
public static unsafe partial class FusedOps
{
    /// <summary>
    /// For benchmarks and tests: the decode step as it was before these folds (each op on its own, q/k/v and gate/up
    /// as separate matmuls, K/V repeated for attention), to compare speed and chosen ids in one process. Per thread, so
    /// tests running side by side do not switch each other's folds.
    /// </summary>
    internal static bool DecodeFoldsSuspended { get => t_decodeFoldsSuspended; set => t_decodeFoldsSuspended = value; }

    [ThreadStatic] private static bool t_decodeFoldsSuspended;

    /// <summary>
    /// RoPE on one new position's q (B, nH, 1, hD) and k (B, nKV, 1, hD) as <see cref="Rotary"/> computes it, then k and
    /// v stored at position <paramref name="slot"/> of the cache buffers <paramref name="keys"/> and
    /// <paramref name="values"/> (B, nKV, capacity, hD), in one kernel. Returns the rotated q (B, nH, 1, hD), or null
    /// when no kernel applies (then nothing was written): more than one position, gradients, other layouts or dtypes.
    /// q, k and v may be strided over the batch (views of one projection's output); within a row, heads and values are
    /// contiguous.
    /// </summary>
    public static Tensor? RotaryStore(Tensor q, Tensor k, Tensor v, Tensor cos, Tensor signedSin, Tensor keys, Tensor values, long slot)
    {
        if (DecodeFoldsSuspended || !CudaKernels.On(q.device) || q.dim() != 4 || k.dim() != 4 || v.dim() != 4) return null;
        long[] qs = q.shape, ks = k.shape;
        if (qs[2] != 1 || !ks.SequenceEqual(v.shape) || ks[0] != qs[0] || ks[2] != 1 || ks[3] != qs[3] || !RowsContiguous(q)
            || !RowsContiguous(k) || !RowsContiguous(v) || k.dtype != q.dtype || v.dtype != q.dtype || !NoGradient(q, k, v))
            return null;
        return LaunchRotaryStore(q, q.stride(0), CudaKernels.Pointer(k), k.stride(0), CudaKernels.Pointer(v), v.stride(0), qs[0], qs[1], ks[1], qs[3],
            cos, signedSin, keys, values, slot);
    }

    /// <summary>
    /// <see cref="RotaryStore(Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, long)"/> for q, k and v side by
    /// side in one projection's output (B, 1, (nH + 2·nKV)·hD), read in place.
    /// </summary>
    public static Tensor? RotaryStore(Tensor qkv, int heads, int kvHeads, Tensor cos, Tensor signedSin, Tensor keys, Tensor values, long slot)
    {
        if (DecodeFoldsSuspended || !CudaKernels.On(qkv.device) || qkv.dim() != 3 || !qkv.is_contiguous() || !NoGradient(qkv)) return null;
        long[] shape = qkv.shape;
        long width = shape[2], d = width / (heads + 2 * kvHeads);
        if (shape[1] != 1 || d * (heads + 2 * kvHeads) != width) return null;
        ulong pq = CudaKernels.Pointer(qkv);
        long bytes = qkv.ElementSize;
        return LaunchRotaryStore(qkv, width, pq + (ulong)(heads * d * bytes), width, pq + (ulong)((heads + kvHeads) * d * bytes), width,
            shape[0], heads, kvHeads, d, cos, signedSin, keys, values, slot);
    }

    /// <summary>Checks the tables and the cache against the q, k, v of one position and launches rotary_store_; null where it does not apply.</summary>
    private static Tensor? LaunchRotaryStore(Tensor q, long qb, ulong pk, long kb, ulong pv, long vb, long b, long heads, long kvHeads, long d,
        Tensor cos, Tensor signedSin, Tensor keys, Tensor values, long slot)
    {
        if (Suffix(q.dtype) is not string suffix || d % 2 != 0) return null;
        long[] cs = cos.shape, cache = keys.shape;
        if (cos.dtype != q.dtype || signedSin.dtype != q.dtype || cos.dim() != 4 || cs[1] != 1 || cs[2] != 1 || cs[3] != d
            || (cs[0] != b && cs[0] != 1) || cos.stride(3) != 1 || !cos.stride().SequenceEqual(signedSin.stride()) || !cs.SequenceEqual(signedSin.shape)
            || !cache.SequenceEqual(values.shape) || cache[0] != b || cache[1] != kvHeads || cache[3] != d || slot < 0 || slot >= cache[2]
            || keys.dtype != q.dtype || values.dtype != q.dtype || !keys.is_contiguous() || !values.is_contiguous()
            || keys.device_index != q.device_index || values.device_index != q.device_index || cos.device_index != q.device_index)
            return null;
        var qOut = empty([b, heads, 1, d], q.dtype, q.device);
        ulong pq = CudaKernels.Pointer(q), pc = CudaKernels.Pointer(cos), ps = CudaKernels.Pointer(signedSin), po = CudaKernels.Pointer(qOut),
            pkeys = CudaKernels.Pointer(keys), pvalues = CudaKernels.Pointer(values);
        int nH = (int)heads, nKv = (int)kvHeads, width = (int)d, capacity = (int)cache[2], position = (int)slot;
        long cb = cs[0] == 1 ? 0 : cos.stride(0);
        long totalQ = b * heads * d, totalKv = b * kvHeads * d;
        void** args = stackalloc void*[] { &pq, &pk, &pv, &pc, &ps, &po, &pkeys, &pvalues, &nH, &nKv, &width, &qb, &kb, &vb, &cb, &capacity, &position, &totalQ, &totalKv };
        CudaKernels.Launch(q.device, $"rotary_store_{suffix}", (totalQ + 2 * totalKv + Threads - 1) / Threads, Threads, args);
        return qOut;
    }

    /// <summary>(B, n, 1, hD) with each batch row's n·hD values contiguous (any stride between batch rows).</summary>
    private static bool RowsContiguous(Tensor x) => x.stride(3) == 1 && x.stride(1) == x.shape[3];

    /// <summary>
    /// silu(gate) * up for gate and up side by side in the last dimension of <paramref name="gateUp"/> (..., 2·I), as
    /// a stacked gate/up projection gives them: (..., I), rounded as <see cref="SiluMul"/>. One kernel on CUDA without
    /// gradients; else <see cref="SiluMul"/> on the two halves.
    /// </summary>
    public static Tensor SiluMulHalves(Tensor gateUp)
    {
        long[] shape = gateUp.shape;
        long inter = shape[^1] / 2;
        if (!DecodeFoldsSuspended && CudaKernels.On(gateUp.device) && Suffix(gateUp.dtype) is string suffix && shape[^1] % 2 == 0 && gateUp.is_contiguous() && NoGradient(gateUp))
        {
            var y = empty([.. shape[..^1], inter], gateUp.dtype, gateUp.device);
            ulong pg = CudaKernels.Pointer(gateUp), py = CudaKernels.Pointer(y);
            long n = y.numel();
            void** args = stackalloc void*[] { &pg, &py, &inter, &n };
            CudaKernels.Launch(gateUp.device, $"silu_mul_halves_{suffix}", (n + Threads - 1) / Threads, Threads, args);
            return y;
        }
        using var scope = NewDisposeScope();
        return scope.MoveToOuter(SiluMul(gateUp.narrow(-1, 0, inter).contiguous(), gateUp.narrow(-1, inter, inter).contiguous()));
    }

    /// <summary>
    /// The residual add and the norm after it: sum = x + delta and RmsNorm(sum), sum as <see cref="ScalarArithmetic.Plus(Tensor, Tensor)"/>
    /// rounds it and the norm as <see cref="RmsNorm"/> computes it. On CUDA without gradients one kernel writes the sum
    /// over <paramref name="delta"/> (a block's output its caller owns and needs no more) and returns delta as the sum;
    /// elsewhere the add and the norm, with delta untouched.
    /// </summary>
    public static (Tensor Sum, Tensor Normed) AddRmsNorm(Tensor x, Tensor delta, Tensor weight, double eps)
    {
        long h = x.shape[^1];
        if (!DecodeFoldsSuspended && CudaKernels.On(x.device) && Suffix(x.dtype) is string suffix && delta.dtype == x.dtype && weight.dtype == x.dtype
            && x.shape.SequenceEqual(delta.shape) && x.is_contiguous() && delta.is_contiguous() && weight.is_contiguous()
            && NoGradient(x, delta, weight) && h <= int.MaxValue)
        {
            var y = empty_like(x);
            ulong px = CudaKernels.Pointer(x), pd = CudaKernels.Pointer(delta), pw = CudaKernels.Pointer(weight), py = CudaKernels.Pointer(y);
            int width = (int)h;
            float epsilon = (float)eps;
            void** args = stackalloc void*[] { &px, &pd, &pw, &py, &width, &epsilon };
            // rms_norm_'s form and block size (NormLaunch), so the sums of squares add in the same order.
            var (kernel, threads) = NormLaunch("add_rms_norm", h, px | pd | pw | py);
            CudaKernels.Launch(x.device, $"{kernel}_{suffix}", x.numel() / Math.Max(1, h), threads, args);
            return (delta, y);
        }
        var sum = x.Plus(delta);
        return (sum, RmsNorm(sum, weight, eps));
    }
}
