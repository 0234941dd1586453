// FineTune's CUDA kernels, compiled at first use with NVRTC (FineTune.Engine/Kernels/CudaKernels.cs).
// No headers: NVRTC finds none without a CUDA toolkit, so 16-bit floats travel as their raw bits (unsigned short)
// and are converted here with the rounding torch uses (round to nearest even). Compiled with --fmad=false, so each
// product and sum rounds on its own as in torch's separate ops: where a kernel repeats torch's arithmetic in the
// same order, its result is bit-equal to the fallback's (FusedOps.cs says which are, and the bound for the others).
// Every kernel exists three times, for fp32 (_f32), bf16 (_bf16) and fp16 (_f16) tensors.

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long long u64;

__device__ __forceinline__ float load_f32(float v) { return v; }
__device__ __forceinline__ float store_f32(float v) { return v; }

__device__ __forceinline__ float bf16_to_f32(u16 b) { return __uint_as_float(((u32)b) << 16); }
__device__ __forceinline__ u16 f32_to_bf16(float f)
{
    u32 u = __float_as_uint(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (u16)0x7fc0;       // NaN, as c10::BFloat16
    u += 0x7fffu + ((u >> 16) & 1u);                                  // round to nearest even
    return (u16)(u >> 16);
}

__device__ __forceinline__ float f16_to_f32(u16 h) { float f; asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(h)); return f; }
__device__ __forceinline__ u16 f32_to_f16(float f) { u16 h; asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h) : "f"(f)); return h; }

// 16 consecutive values to and from memory as 16-byte vectors (the address 16-byte aligned): fp32 through float4,
// 16-bit floats two to a word through uint4. Inlined with constant indices, the arrays stay in registers.
__device__ __forceinline__ u32 pack_bf16(float lo, float hi) { return (u32)f32_to_bf16(lo) | ((u32)f32_to_bf16(hi) << 16); }
__device__ __forceinline__ u32 pack_f16(float lo, float hi) { return (u32)f32_to_f16(lo) | ((u32)f32_to_f16(hi) << 16); }

// (make_uint4/make_float4 live in a CUDA header that NVRTC may not have; these need none.)
__device__ __forceinline__ uint4 u4(u32 x, u32 y, u32 z, u32 w) { uint4 r; r.x = x; r.y = y; r.z = z; r.w = w; return r; }
__device__ __forceinline__ float4 f4(float x, float y, float z, float w) { float4 r; r.x = x; r.y = y; r.z = z; r.w = w; return r; }

__device__ __forceinline__ void store16_f32(float* dst, const float* v)
{
    float4* d = (float4*)dst;
#pragma unroll
    for (int i = 0; i < 4; i++) d[i] = f4(v[4 * i], v[4 * i + 1], v[4 * i + 2], v[4 * i + 3]);
}
__device__ __forceinline__ void load16_f32(const float* src, float* v)
{
    const float4* s = (const float4*)src;
#pragma unroll
    for (int i = 0; i < 4; i++) { float4 q = s[i]; v[4 * i] = q.x; v[4 * i + 1] = q.y; v[4 * i + 2] = q.z; v[4 * i + 3] = q.w; }
}

#define DEFINE_VECTOR16(SUFFIX, TO_F32)                                                                                 \
__device__ __forceinline__ void store16_##SUFFIX(u16* dst, const float* v)                                            \
{                                                                                                                     \
    uint4* d = (uint4*)dst;                                                                                           \
    _Pragma("unroll") for (int i = 0; i < 2; i++)                                                                     \
        d[i] = u4(pack_##SUFFIX(v[8 * i], v[8 * i + 1]), pack_##SUFFIX(v[8 * i + 2], v[8 * i + 3]),            \
                          pack_##SUFFIX(v[8 * i + 4], v[8 * i + 5]), pack_##SUFFIX(v[8 * i + 6], v[8 * i + 7]));       \
}                                                                                                                     \
__device__ __forceinline__ void load16_##SUFFIX(const u16* src, float* v)                                             \
{                                                                                                                     \
    const uint4* s = (const uint4*)src;                                                                               \
    _Pragma("unroll") for (int i = 0; i < 2; i++) {                                                                   \
        uint4 q = s[i];                                                                                               \
        v[8 * i] = TO_F32((u16)(q.x & 0xffffu)); v[8 * i + 1] = TO_F32((u16)(q.x >> 16));                            \
        v[8 * i + 2] = TO_F32((u16)(q.y & 0xffffu)); v[8 * i + 3] = TO_F32((u16)(q.y >> 16));                        \
        v[8 * i + 4] = TO_F32((u16)(q.z & 0xffffu)); v[8 * i + 5] = TO_F32((u16)(q.z >> 16));                        \
        v[8 * i + 6] = TO_F32((u16)(q.w & 0xffffu)); v[8 * i + 7] = TO_F32((u16)(q.w >> 16));                        \
    }                                                                                                                 \
}

DEFINE_VECTOR16(bf16, bf16_to_f32)
DEFINE_VECTOR16(f16, f16_to_f32)

// Warp and block reductions in fp32: a butterfly within each warp, then the warps' results through shared memory
// (32 floats) and a butterfly again; every thread gets the result. Sum (identity 0) and max (identity -inf).
struct SumOp { __device__ __forceinline__ float operator()(float a, float b) const { return a + b; } };
struct MaxOp { __device__ __forceinline__ float operator()(float a, float b) const { return fmaxf(a, b); } };

template <typename Op> __device__ __forceinline__ float warp_reduce(float v, Op op)
{
    for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

template <typename Op> __device__ float block_reduce(float v, float* shared, float identity, Op op)
{
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, warps = (blockDim.x + 31) >> 5;
    v = warp_reduce(v, op);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < warps ? shared[lane] : identity;
    return warp_reduce(v, op);
}

__device__ __forceinline__ float warp_sum(float v) { return warp_reduce(v, SumOp()); }
__device__ float block_sum(float v, float* shared) { return block_reduce(v, shared, 0.0f, SumOp()); }
__device__ float block_max(float v, float* shared) { return block_reduce(v, shared, __int_as_float(0xff800000), MaxOp()); }

// RoPE's pair p of the (B, nH, T, d/2) pairs (k, k + d/2): its batch, head, token and k, in 32-bit arithmetic (the host
// keeps pairs below 2^32), and where its output row starts in (B, T, nH, d) order. rotary_ and rotary_backward_ take a
// pair a thread.
__device__ __forceinline__ long long rotary_pair(long long p, int d, int heads, int tokens,
    unsigned int& b, unsigned int& hh, unsigned int& t, unsigned int& j)
{
    unsigned int half = (unsigned int)d >> 1, r = (unsigned int)p;
    j = r % half; r /= half;
    hh = r % (unsigned int)heads; r /= (unsigned int)heads;
    t = r % (unsigned int)tokens; b = r / (unsigned int)tokens;
    return (((long long)b * tokens + t) * heads + hh) * d;
}

// The 16 NF4 values (bitsandbytes' table); Nf4.Code in C#.
__constant__ float NF4[16] = {
    -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
    -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
    0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
    0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f };

// The absmax of 64-block b: fp32 as given, or double-quantized: dynamic_map[code] * nested[b / 256] + offset
// (Nf4.DequantizeAbsmax: take, mul_, add_ in that order).
__device__ __forceinline__ float nf4_absmax(long long b, const float* absmax, const u8* codes, const float* nested,
                                            const float* offset, const float* dynamic_map)
{
    if (absmax) return absmax[b];
    float a = dynamic_map[codes[b]] * nested[b >> 8];
    return a + offset[0];
}

#define DEFINE_KERNELS(SUFFIX, T, TO_F32, FROM_F32)                                                                     \
/* NF4 -> T for n values: each thread 8 packed bytes (16 values, a quarter of a 64-block). The code table sits in    \
   shared memory: lanes look up different entries, which constant memory would serialise. */                         \
extern "C" __global__ void nf4_dequantize_##SUFFIX(const u8* packed, const float* absmax, const u8* codes,            \
    const float* nested, const float* offset, const float* dynamic_map, T* out, long long n)                            \
{                                                                                                                     \
    __shared__ float table[16];                                                                                       \
    if (threadIdx.x < 16) table[threadIdx.x] = NF4[threadIdx.x];                                                      \
    __syncthreads();                                                                                                  \
    long long first = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 16;   /* first value of this thread */     \
    if (first >= n) return;                                                                                           \
    float a = nf4_absmax(first >> 6, absmax, codes, nested, offset, dynamic_map);                                     \
    if (first + 16 <= n) {                                                                                            \
        uint2 bytes = *(const uint2*)(packed + (first >> 1));                                                         \
        float v[16];                                                                                                  \
        _Pragma("unroll") for (int i = 0; i < 8; i++) {                                                               \
            u32 byte = ((i < 4 ? bytes.x : bytes.y) >> (8 * (i & 3))) & 0xffu;                                        \
            v[2 * i] = table[byte >> 4] * a;                                                                          \
            v[2 * i + 1] = table[byte & 15] * a;                                                                      \
        }                                                                                                             \
        store16_##SUFFIX(out + first, v);                                                                             \
    } else {                                                                                                          \
        for (long long j = first; j < n; j++) {                                                                       \
            u32 byte = packed[j >> 1];                                                                                \
            out[j] = FROM_F32(table[(j & 1) ? (byte & 15) : (byte >> 4)] * a);                                        \
        }                                                                                                             \
    }                                                                                                                 \
}                                                                                                                     \
                                                                                                                      \
/* y[o] = sum_i x[i] * W[o, i] for one row x (in) and W NF4 (out, in), in % 64 == 0: one warp per output. Each      \
   weight is rounded to T first, as the dequantized weight of the fallback; fp32 products and sums. */                 \
extern "C" __global__ void nf4_matvec_##SUFFIX(const u8* packed, const float* absmax, const u8* codes,                \
    const float* nested, const float* offset, const float* dynamic_map, const T* x, T* y, int in_features,              \
    int out_features)                                                                                                 \
{                                                                                                                     \
    __shared__ float table[16];                                                                                       \
    if (threadIdx.x < 16) table[threadIdx.x] = NF4[threadIdx.x];                                                      \
    __syncthreads();                                                                                                  \
    int row = blockIdx.x * (blockDim.x >> 5) + (threadIdx.x >> 5);                                                    \
    int lane = threadIdx.x & 31;                                                                                      \
    if (row >= out_features) return;                                                                                  \
    const u8* w = packed + (long long)row * (in_features >> 1);                                                       \
    long long row_first = (long long)row * in_features;                                                               \
    float acc = 0.0f;                                                                                                 \
    for (int i = lane * 16; i < in_features; i += 32 * 16) {                                                          \
        float a = nf4_absmax((row_first + i) >> 6, absmax, codes, nested, offset, dynamic_map);                       \
        uint2 bytes = *(const uint2*)(w + (i >> 1));                                                                  \
        float xs[16];                                                                                                 \
        load16_##SUFFIX(x + i, xs);                                                                                   \
        _Pragma("unroll") for (int k = 0; k < 8; k++) {                                                               \
            u32 byte = ((k < 4 ? bytes.x : bytes.y) >> (8 * (k & 3))) & 0xffu;                                        \
            float w0 = TO_F32(FROM_F32(table[byte >> 4] * a));                                                        \
            float w1 = TO_F32(FROM_F32(table[byte & 15] * a));                                                        \
            acc += w0 * xs[2 * k];                                                                                    \
            acc += w1 * xs[2 * k + 1];                                                                                \
        }                                                                                                             \
    }                                                                                                                 \
    acc = warp_sum(acc);                                                                                              \
    if (lane == 0) y[row] = FROM_F32(acc);                                                                            \
}                                                                                                                     \
                                                                                                                      \
/* RMSNorm of rows of width h: y = w * T(x * rsqrt(mean(x^2) + eps)), the mean in fp32 (RmsNorm.forward). One row a   \
   block in two forms that FusedOps.NormLaunch picks alike for every norm kernel, so their sums add in one order: one \
   value a thread (any width), or 16 values a thread with vector loads (rows of a multiple of 16, 16-byte aligned; one \
   value a thread in blocks of 1024 ran a 7B row set at 1.1 TB/s). Each thread sums its squares in order, then the block. */ \
__device__ __forceinline__ float rms_scale_##SUFFIX(const T* row, int h, float eps, float* shared)                    \
{                                                                                                                     \
    float sum = 0.0f;                                                                                                 \
    for (int i = threadIdx.x; i < h; i += blockDim.x) { float v = TO_F32(row[i]); sum += v * v; }                     \
    sum = block_sum(sum, shared);                                                                                     \
    return rsqrtf(sum / (float)h + eps);                                                                              \
}                                                                                                                     \
__device__ __forceinline__ void rms_apply_##SUFFIX(const T* row, const T* weight, T* out, int h, float scale)         \
{                                                                                                                     \
    for (int i = threadIdx.x; i < h; i += blockDim.x)                                                                 \
        out[i] = FROM_F32(TO_F32(weight[i]) * TO_F32(FROM_F32(TO_F32(row[i]) * scale)));                              \
}                                                                                                                     \
__device__ __forceinline__ float rms_scale16_##SUFFIX(const T* row, int h, float eps, float* shared)                  \
{                                                                                                                     \
    float sum = 0.0f;                                                                                                 \
    for (int c = threadIdx.x * 16; c < h; c += blockDim.x * 16) {                                                     \
        float v[16];                                                                                                  \
        load16_##SUFFIX(row + c, v);                                                                                  \
        _Pragma("unroll") for (int k = 0; k < 16; k++) sum += v[k] * v[k];                                            \
    }                                                                                                                 \
    sum = block_sum(sum, shared);                                                                                     \
    return rsqrtf(sum / (float)h + eps);                                                                              \
}                                                                                                                     \
__device__ __forceinline__ void rms_apply16_##SUFFIX(const T* row, const T* weight, T* out, int h, float scale)       \
{                                                                                                                     \
    for (int c = threadIdx.x * 16; c < h; c += blockDim.x * 16) {                                                     \
        float v[16], w[16];                                                                                           \
        load16_##SUFFIX(row + c, v);                                                                                  \
        load16_##SUFFIX(weight + c, w);                                                                               \
        _Pragma("unroll") for (int k = 0; k < 16; k++) v[k] = w[k] * TO_F32(FROM_F32(v[k] * scale));                  \
        store16_##SUFFIX(out + c, v);                                                                                 \
    }                                                                                                                 \
}                                                                                                                     \
extern "C" __global__ void rms_norm_##SUFFIX(const T* x, const T* weight, T* y, int h, float eps)                     \
{                                                                                                                     \
    __shared__ float shared[32];                                                                                      \
    long long base = (long long)blockIdx.x * h;                                                                       \
    rms_apply_##SUFFIX(x + base, weight, y + base, h, rms_scale_##SUFFIX(x + base, h, eps, shared));                  \
}                                                                                                                     \
extern "C" __global__ void rms_norm16_##SUFFIX(const T* x, const T* weight, T* y, int h, float eps)                   \
{                                                                                                                     \
    __shared__ float shared[32];                                                                                      \
    long long base = (long long)blockIdx.x * h;                                                                       \
    rms_apply16_##SUFFIX(x + base, weight, y + base, h, rms_scale16_##SUFFIX(x + base, h, eps, shared));              \
}                                                                                                                     \
                                                                                                                     \
                                                                                                                      \
/* SwiGLU's middle: y = T(silu(gate)) * up, silu in fp32 as torch's kernel: g / (1 + exp(-g)). */                    \
extern "C" __global__ void silu_mul_##SUFFIX(const T* gate, const T* up, T* y, long long n)                          \
{                                                                                                                     \
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;                                                   \
    if (i >= n) return;                                                                                               \
    float g = TO_F32(gate[i]);                                                                                        \
    float s = TO_F32(FROM_F32(g / (1.0f + expf(-g))));                                                                \
    y[i] = FROM_F32(s * TO_F32(up[i]));                                                                               \
}                                                                                                                     \
                                                                                                                      \
/* The same, 16 values a thread with 16-byte accesses (n % 16 == 0, aligned tensors). */                            \
extern "C" __global__ void silu_mul16_##SUFFIX(const T* gate, const T* up, T* y, long long n)                        \
{                                                                                                                     \
    long long first = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 16;                                        \
    if (first >= n) return;                                                                                           \
    float g[16], u[16];                                                                                               \
    load16_##SUFFIX(gate + first, g);                                                                                 \
    load16_##SUFFIX(up + first, u);                                                                                   \
    _Pragma("unroll") for (int k = 0; k < 16; k++) g[k] = TO_F32(FROM_F32(g[k] / (1.0f + expf(-g[k])))) * u[k];       \
    store16_##SUFFIX(y + first, g);                                                                                   \
}                                                                                                                     \
                                                                                                                      \
/* RoPE: y = T(x * cos) + T(roll(x, d/2) * signed_sin), rounded as torch's three ops (AttentionOps.ApplyRotary).      \
   x (B, nH, T, d) with any strides but d's; cos and signed_sin (B, 1, T, d) with strides (cb, ct, 1); y written in    \
   (B, T, nH, d) order, the layout flash attention takes and the projections' gradients come in. One thread per pair   \
   (k, k + d/2), which read each other's x; the index arithmetic in 32 bits (the host keeps pairs below 2^32): one     \
   thread per value in 64-bit divisions ran at a sixth of the memory's speed. */                                      \
extern "C" __global__ void rotary_##SUFFIX(const T* x, const T* cos, const T* sin, T* y, int heads, int tokens,      \
    int d, long long xb, long long xh, long long xt, long long cb, long long ct, long long pairs)                       \
{                                                                                                                     \
    long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;                                                   \
    if (p >= pairs) return;                                                                                           \
    unsigned int b, hh, t, j, half = (unsigned int)d >> 1;                                                            \
    T* yr = y + rotary_pair(p, d, heads, tokens, b, hh, t, j);                                                        \
    const T* xr = x + b * xb + hh * xh + t * xt;                                                                      \
    long long c = b * cb + t * ct;                                                                                    \
    float lo = TO_F32(xr[j]), hi = TO_F32(xr[j + half]);                                                              \
    /* y[k] = T(T(x[k] * cos[k]) + T(x[k'] * signed_sin[k])), k' = (k + d/2) mod d */                                 \
    yr[j] = FROM_F32(TO_F32(FROM_F32(lo * TO_F32(cos[c + j]))) + TO_F32(FROM_F32(hi * TO_F32(sin[c + j]))));           \
    yr[j + half] = FROM_F32(TO_F32(FROM_F32(hi * TO_F32(cos[c + j + half]))) + TO_F32(FROM_F32(lo * TO_F32(sin[c + j + half])))); \
}

DEFINE_KERNELS(f32, float, load_f32, store_f32)
DEFINE_KERNELS(bf16, u16, bf16_to_f32, f32_to_bf16)
DEFINE_KERNELS(f16, u16, f16_to_f32, f32_to_f16)

// The kernels of a one-token decode step (FusedOps.Decode.cs), where the host's time per launched op is the cost.
#define DEFINE_DECODE_KERNELS(SUFFIX, T, TO_F32, FROM_F32)                                                              \
/* RoPE on one new position's q and k, then k and v stored at position slot of the KV cache: the rotation rounded as  \
   rotary_ (bit-equal to it, then index_copy_). q (B, nH, d), k and v (B, nKV, d): rows of width n*d at batch strides \
   qb, kb, vb; cos and signed sin (B|1, d) at batch stride cb; q_out (B, nH, d) contiguous; keys and values          \
   (B, nKV, capacity, d) contiguous. One thread per value of q, k and v. */                                           \
extern "C" __global__ void rotary_store_##SUFFIX(const T* q, const T* k, const T* v, const T* cos, const T* sin,     \
    T* q_out, T* keys, T* values, int heads, int kv_heads, int d, long long qb, long long kb, long long vb,            \
    long long cb, int capacity, int slot, long long total_q, long long total_kv)                                      \
{                                                                                                                     \
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;                                                   \
    if (i >= total_q + 2 * total_kv) return;                                                                          \
    int part = i < total_q ? 0 : i < total_q + total_kv ? 1 : 2;             /* q, k or v */                          \
    long long j = part == 0 ? i : part == 1 ? i - total_q : i - total_q - total_kv;                                   \
    int n = part == 0 ? heads : kv_heads;                                                                             \
    int e = (int)(j % d);                                                                                             \
    long long r = j / d;                                                                                              \
    int h = (int)(r % n);                                                                                             \
    long long b = r / n;                                                                                              \
    const T* row = (part == 0 ? q + b * qb : part == 1 ? k + b * kb : v + b * vb) + (long long)h * d;                 \
    T out;                                                                                                            \
    if (part == 2) out = row[e];                                                                                      \
    else {                                                                                                            \
        long long c = b * cb + e;                                                                                     \
        int half = d >> 1;                                                                                            \
        float rolled = TO_F32(row[e < half ? e + half : e - half]);                                                   \
        float p = TO_F32(FROM_F32(TO_F32(row[e]) * TO_F32(cos[c])));                                                  \
        float s = TO_F32(FROM_F32(rolled * TO_F32(sin[c])));                                                          \
        out = FROM_F32(p + s);                                                                                        \
    }                                                                                                                 \
    if (part == 0) q_out[j] = out;                                                                                    \
    else (part == 1 ? keys : values)[((b * kv_heads + h) * (long long)capacity + slot) * d + e] = out;                \
}                                                                                                                     \
                                                                                                                      \
/* SwiGLU's middle for gate and up side by side in rows of width 2*inter (one stacked projection's output):          \
   y[r, i] = T(silu(gu[r, i])) * gu[r, inter + i], rounded as silu_mul_. */                                          \
extern "C" __global__ void silu_mul_halves_##SUFFIX(const T* gu, T* y, long long inter, long long n)                 \
{                                                                                                                     \
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;                                                   \
    if (i >= n) return;                                                                                               \
    long long r = i / inter, c = i - r * inter;                                                                       \
    const T* row = gu + r * 2 * inter;                                                                                \
    float g = TO_F32(row[c]);                                                                                         \
    float s = TO_F32(FROM_F32(g / (1.0f + expf(-g))));                                                                \
    y[i] = FROM_F32(s * TO_F32(row[inter + c]));                                                                      \
}                                                                                                                     \
                                                                                                                      \
/* The residual add and the next RMSNorm: s = T(x + delta) written over delta, y = RMSNorm(s) as rms_norm_ computes   \
   it (same loop and block sum, so bit-equal to an add and rms_norm_). */                                             \
extern "C" __global__ void add_rms_norm_##SUFFIX(const T* x, T* delta, const T* weight, T* y, int h, float eps)     \
{                                                                                                                     \
    __shared__ float shared[32];                                                                                      \
    const T* row = x + (long long)blockIdx.x * h;                                                                     \
    T* sum_row = delta + (long long)blockIdx.x * h;                                                                   \
    T* out = y + (long long)blockIdx.x * h;                                                                           \
    float sum = 0.0f;                                                                                                 \
    for (int i = threadIdx.x; i < h; i += blockDim.x) {                                                               \
        T s = FROM_F32(TO_F32(row[i]) + TO_F32(sum_row[i]));                                                          \
        sum_row[i] = s;                                                                                               \
        float v = TO_F32(s); sum += v * v;                                                                            \
    }                                                                                                                 \
    sum = block_sum(sum, shared);                                                                                     \
    rms_apply_##SUFFIX(sum_row, weight, out, h, rsqrtf(sum / (float)h + eps));                                        \
}                                                                                                                     \
                                                                                                                      \
/* add_rms_norm_ 16 values a thread, as rms_norm16_ (the same sums, so bit-equal to an add and rms_norm16_). */       \
extern "C" __global__ void add_rms_norm16_##SUFFIX(const T* x, T* delta, const T* weight, T* y, int h, float eps)     \
{                                                                                                                     \
    __shared__ float shared[32];                                                                                      \
    long long base = (long long)blockIdx.x * h;                                                                       \
    float sum = 0.0f;                                                                                                 \
    for (int c = threadIdx.x * 16; c < h; c += blockDim.x * 16) {                                                     \
        float a[16], d[16];                                                                                           \
        load16_##SUFFIX(x + base + c, a);                                                                             \
        load16_##SUFFIX(delta + base + c, d);                                                                         \
        _Pragma("unroll") for (int k = 0; k < 16; k++) a[k] = TO_F32(FROM_F32(a[k] + d[k]));                          \
        store16_##SUFFIX(delta + base + c, a);                                                                        \
        _Pragma("unroll") for (int k = 0; k < 16; k++) sum += a[k] * a[k];                                            \
    }                                                                                                                 \
    sum = block_sum(sum, shared);                                                                                     \
    rms_apply16_##SUFFIX(delta + base, weight, y + base, h, rsqrtf(sum / (float)h + eps));                            \
}

DEFINE_DECODE_KERNELS(f32, float, load_f32, store_f32)
DEFINE_DECODE_KERNELS(bf16, u16, bf16_to_f32, f32_to_bf16)
DEFINE_DECODE_KERNELS(f16, u16, f16_to_f32, f32_to_f16)

// splitmix64's output function (Steele, Lea, Flood 2014): a bijective 64-bit mix, the hash of LoRA dropout's masks.
__device__ __forceinline__ u64 splitmix64(u64 z)
{
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// LoRA dropout's draws for a mask's stream splitmix64(seed ^ splitmix64(key)): one hash h = splitmix64(stream + i / 2)
// for each pair of elements; the even element's u in [0, 1) is h's top 24 bits (63..40) / 2^24, the odd one's bits 31..8;
// an element is kept where u >= p. (The hash's 64-bit multiplies, not memory, bound these kernels: dropout16_ on a
// 2,048 x 3,584 bf16 tensor on an H200 took 14.8 us with a hash an element, 13.0 us with a hash a pair; ~7 us moves its bytes.)
__device__ __forceinline__ float dropout_bits_u(u64 h, int odd)
{
    return (float)(odd ? (u32)(h >> 8) & 0xffffffu : (u32)(h >> 40)) * (1.0f / 16777216.0f);
}
__device__ __forceinline__ float dropout_u(u64 stream, long long i)
{
    return dropout_bits_u(splitmix64(stream + (u64)(i >> 1)), (int)(i & 1));
}

// The kernels of training's fused autograd functions (FusedOps.Training.cs): forward passes that keep what backward
// needs, and the backward passes, which repeat the gradient arithmetic of the torch ops' autograd graph in fp32.
#define DEFINE_TRAINING_KERNELS(SUFFIX, T, TO_F32, FROM_F32)                                                            \
/* rms_norm_ (and rms_norm16_) that also write each row's rstd = rsqrt(mean(x^2) + eps) in fp32, the one value        \
   backward keeps. The same helpers, so y is the no-gradient kernel's bit for bit (a checkpointed layer's recompute sees \
   the activations its first pass made). */                                                                           \
extern "C" __global__ void rms_norm_rstd_##SUFFIX(const T* x, const T* weight, T* y, float* rstd, int h, float eps)   \
{                                                                                                                     \
    __shared__ float shared[32];                                                                                      \
    long long base = (long long)blockIdx.x * h;                                                                       \
    float scale = rms_scale_##SUFFIX(x + base, h, eps, shared);                                                       \
    if (threadIdx.x == 0) rstd[blockIdx.x] = scale;                                                                   \
    rms_apply_##SUFFIX(x + base, weight, y + base, h, scale);                                                         \
}                                                                                                                     \
extern "C" __global__ void rms_norm_rstd16_##SUFFIX(const T* x, const T* weight, T* y, float* rstd, int h, float eps) \
{                                                                                                                     \
    __shared__ float shared[32];                                                                                      \
    long long base = (long long)blockIdx.x * h;                                                                       \
    float scale = rms_scale16_##SUFFIX(x + base, h, eps, shared);                                                     \
    if (threadIdx.x == 0) rstd[blockIdx.x] = scale;                                                                   \
    rms_apply16_##SUFFIX(x + base, weight, y + base, h, scale);                                                       \
}                                                                                                                     \
                                                                                                                      \
/* rms_norm_backward_ 16 values a thread: the same arithmetic per value, the dot product summed as rms_norm16_ sums. */ \
extern "C" __global__ void rms_norm_backward16_##SUFFIX(const T* dy, const T* x, const T* weight, const float* rstd,  \
    T* dx, int h)                                                                                                     \
{                                                                                                                     \
    __shared__ float shared[32];                                                                                      \
    long long base = (long long)blockIdx.x * h;                                                                       \
    float r = rstd[blockIdx.x];                                                                                       \
    float dot = 0.0f;                                                                                                 \
    for (int c = threadIdx.x * 16; c < h; c += blockDim.x * 16) {                                                     \
        float g[16], v[16], w[16];                                                                                    \
        load16_##SUFFIX(dy + base + c, g);                                                                            \
        load16_##SUFFIX(x + base + c, v);                                                                             \
        load16_##SUFFIX(weight + c, w);                                                                               \
        _Pragma("unroll") for (int k = 0; k < 16; k++) dot += TO_F32(FROM_F32(g[k] * w[k])) * v[k];                   \
    }                                                                                                                 \
    dot = block_sum(dot, shared);                                                                                     \
    float dsq = (-0.5f * dot) * (r * r * r) / (float)h;                                                               \
    for (int c = threadIdx.x * 16; c < h; c += blockDim.x * 16) {                                                     \
        float g[16], v[16], w[16];                                                                                    \
        load16_##SUFFIX(dy + base + c, g);                                                                            \
        load16_##SUFFIX(x + base + c, v);                                                                             \
        load16_##SUFFIX(weight + c, w);                                                                               \
        _Pragma("unroll") for (int k = 0; k < 16; k++) g[k] = TO_F32(FROM_F32(g[k] * w[k])) * r + dsq * (2.0f * v[k]); \
        store16_##SUFFIX(dx + base + c, g);                                                                           \
    }                                                                                                                 \
}                                                                                                                     \
                                                                                                                      \
/* RMSNorm's input gradient, as autograd of y = w * T(T32(x) * r), r = rsqrt(mean(T32(x)^2) + eps), computes it:     \
   g = T32(T(dy * w)); dx = T(g * r + (-0.5 * sum(g * x) * r^3 / h) * 2 * x). One block a row. */                     \
extern "C" __global__ void rms_norm_backward_##SUFFIX(const T* dy, const T* x, const T* weight, const float* rstd,  \
    T* dx, int h)                                                                                                     \
{                                                                                                                     \
    __shared__ float shared[32];                                                                                      \
    long long base = (long long)blockIdx.x * h;                                                                       \
    float r = rstd[blockIdx.x];                                                                                       \
    float dot = 0.0f;                                                                                                 \
    for (int i = threadIdx.x; i < h; i += blockDim.x) {                                                               \
        float g = TO_F32(FROM_F32(TO_F32(dy[base + i]) * TO_F32(weight[i])));                                         \
        dot += g * TO_F32(x[base + i]);                                                                               \
    }                                                                                                                 \
    dot = block_sum(dot, shared);                                                                                     \
    float dsq = (-0.5f * dot) * (r * r * r) / (float)h;                                                               \
    for (int i = threadIdx.x; i < h; i += blockDim.x) {                                                               \
        float g = TO_F32(FROM_F32(TO_F32(dy[base + i]) * TO_F32(weight[i])));                                         \
        float v = TO_F32(x[base + i]);                                                                                \
        dx[base + i] = FROM_F32(g * r + dsq * (2.0f * v));                                                            \
    }                                                                                                                 \
}                                                                                                                     \
                                                                                                                      \
/* LoRA dropout whose mask is a function of (seed, key, i) alone: y = T(x * scale) where kept, else 0, kept when      \
   u >= p for u = dropout_u's 24 bits of the pair's hash / 2^24 (see dropout_bits_u). The seed is read from           \
   device memory, so a captured CUDA graph draws new masks when it changes between replays; the key tells a step's      \
   draws apart; backward applies the same function to dy (torch's fused dropout rounds x * mask * scale the same way). */\
extern "C" __global__ void dropout_##SUFFIX(const T* x, T* y, const long long* seed, long long key, float p,          \
    float scale, long long n)                                                                                         \
{                                                                                                                     \
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;                                                   \
    if (i >= n) return;                                                                                               \
    u64 stream = splitmix64((u64)seed[0] ^ splitmix64((u64)key));                                                     \
    y[i] = dropout_u(stream, i) >= p ? FROM_F32(TO_F32(x[i]) * scale) : FROM_F32(0.0f);                               \
}                                                                                                                     \
                                                                                                                      \
/* The same, 16 values a thread with 16-byte accesses (n % 16 == 0, aligned tensors), the stream mixed once a thread  \
   (one value a thread mixed it again for every value: 35 us for a 2,048 x 3,584 bf16 tensor on an H200, 0.8 TB/s).    \
   Bit for bit dropout_. */                                                                                           \
extern "C" __global__ void dropout16_##SUFFIX(const T* x, T* y, const long long* seed, long long key, float p,        \
    float scale, long long n)                                                                                         \
{                                                                                                                     \
    long long first = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 16;                                        \
    if (first >= n) return;                                                                                           \
    float v[16];                                                                                                      \
    load16_##SUFFIX(x + first, v);                                                                                    \
    u64 stream = splitmix64((u64)seed[0] ^ splitmix64((u64)key));                                                     \
    _Pragma("unroll") for (int k = 0; k < 16; k += 2) {                                                               \
        u64 h = splitmix64(stream + (u64)((first + k) >> 1));                                                         \
        v[k] = dropout_bits_u(h, 0) >= p ? v[k] * scale : 0.0f;                                                       \
        v[k + 1] = dropout_bits_u(h, 1) >= p ? v[k + 1] * scale : 0.0f;                                               \
    }                                                                                                                 \
    store16_##SUFFIX(y + first, v);                                                                                   \
}                                                                                                                     \
                                                                                                                      \
/* dropout_ of silu_mul_'s value, from gate and up in one pass: LoRA A's input of the MLP's down projection, drawn     \
   again in backward from what SwiGLU's backward keeps anyway (FusedOps.SiluMulDropoutLinear); bit for bit silu_mul_  \
   then dropout_. */                                                                                                  \
extern "C" __global__ void silu_mul_dropout_##SUFFIX(const T* gate, const T* up, T* y, const long long* seed,        \
    long long key, float p, float scale, long long n)                                                                 \
{                                                                                                                     \
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;                                                   \
    if (i >= n) return;                                                                                               \
    float g = TO_F32(gate[i]);                                                                                        \
    float h = TO_F32(FROM_F32(TO_F32(FROM_F32(g / (1.0f + expf(-g)))) * TO_F32(up[i])));                              \
    u64 stream = splitmix64((u64)seed[0] ^ splitmix64((u64)key));                                                     \
    y[i] = dropout_u(stream, i) >= p ? FROM_F32(h * scale) : FROM_F32(0.0f);                                          \
}                                                                                                                     \
                                                                                                                      \
/* The same, 16 values a thread with 16-byte accesses (n % 16 == 0, aligned tensors). */                            \
extern "C" __global__ void silu_mul_dropout16_##SUFFIX(const T* gate, const T* up, T* y, const long long* seed,      \
    long long key, float p, float scale, long long n)                                                                 \
{                                                                                                                     \
    long long first = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 16;                                        \
    if (first >= n) return;                                                                                           \
    float g[16], u[16];                                                                                               \
    load16_##SUFFIX(gate + first, g);                                                                                 \
    load16_##SUFFIX(up + first, u);                                                                                   \
    u64 stream = splitmix64((u64)seed[0] ^ splitmix64((u64)key));                                                     \
    _Pragma("unroll") for (int k = 0; k < 16; k += 2) {                                                               \
        u64 hash = splitmix64(stream + (u64)((first + k) >> 1));                                                      \
        _Pragma("unroll") for (int j = 0; j < 2; j++) {                                                               \
            float h = TO_F32(FROM_F32(TO_F32(FROM_F32(g[k + j] / (1.0f + expf(-g[k + j])))) * u[k + j]));             \
            g[k + j] = dropout_bits_u(hash, j) >= p ? h * scale : 0.0f;                                               \
        }                                                                                                             \
    }                                                                                                                 \
    store16_##SUFFIX(y + first, g);                                                                                   \
}                                                                                                                     \
                                                                                                                      \
/* SiLU·up's gradients from gate and up alone (silu(gate) is computed again, rounded as the forward rounds it):      \
   dup = T(dy * T(silu(g))), dgate = T(T32(T(dy * up)) * s * (1 + g * (1 - s))) with s = sigmoid(g), as torch's     \
   silu_backward computes it. */                                                                                      \
extern "C" __global__ void silu_mul_backward_##SUFFIX(const T* dy, const T* gate, const T* up, T* dgate, T* dup,    \
    long long n)                                                                                                      \
{                                                                                                                     \
    long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;                                                   \
    if (i >= n) return;                                                                                               \
    float g = TO_F32(gate[i]);                                                                                        \
    float d = TO_F32(dy[i]);                                                                                          \
    float u = TO_F32(up[i]);             /* read before dup[i] is written: dup may be up (FusedOps: in place) */      \
    float e = 1.0f + expf(-g);                                                                                        \
    float silu = TO_F32(FROM_F32(g / e));                                                                             \
    dup[i] = FROM_F32(d * silu);                                                                                      \
    float ds = TO_F32(FROM_F32(d * u));                                                                               \
    float s = 1.0f / e;                                                                                               \
    dgate[i] = FROM_F32(ds * s * (1.0f + g * (1.0f - s)));                                                            \
}                                                                                                                     \
                                                                                                                      \
/* The same, 16 values a thread with 16-byte accesses (n % 16 == 0, aligned tensors): the MLP's backward reads three  \
   and writes two (T, 18944) tensors, bound by memory bandwidth. */                                                  \
extern "C" __global__ void silu_mul_backward16_##SUFFIX(const T* dy, const T* gate, const T* up, T* dgate, T* dup,  \
    long long n)                                                                                                      \
{                                                                                                                     \
    long long first = ((long long)blockIdx.x * blockDim.x + threadIdx.x) * 16;                                        \
    if (first >= n) return;                                                                                           \
    float d[16], g[16], u[16], dg[16], du[16];                                                                        \
    load16_##SUFFIX(dy + first, d);                                                                                   \
    load16_##SUFFIX(gate + first, g);                                                                                 \
    load16_##SUFFIX(up + first, u);                                                                                   \
    _Pragma("unroll") for (int k = 0; k < 16; k++) {                                                                  \
        float e = 1.0f + expf(-g[k]);                                                                                 \
        float silu = TO_F32(FROM_F32(g[k] / e));                                                                      \
        du[k] = d[k] * silu;                                                                                          \
        float ds = TO_F32(FROM_F32(d[k] * u[k]));                                                                     \
        float s = 1.0f / e;                                                                                           \
        dg[k] = ds * s * (1.0f + g[k] * (1.0f - s));                                                                  \
    }                                                                                                                 \
    store16_##SUFFIX(dgate + first, dg);                                                                              \
    store16_##SUFFIX(dup + first, du);                                                                                \
}                                                                                                                     \
                                                                                                                      \
/* RoPE's input gradient, as autograd of rotary_'s torch ops (x * cos + roll(x, d/2) * signed_sin, the tables frozen) \
   computes it: each product's gradient T(dy * table), roll's sent back by roll(-d/2), the two added in fp32 and      \
   rounded once (x's gradient buffer): dx[k] = T(T(dy[k] * cos[k]) + T(dy[k'] * signed_sin[k'])),                     \
   k' = (k + d/2) mod d. dy (B, nH, T, d) with strides (db, dh, dt, 1); tables as rotary_'s; dx written in            \
   (B, T, nH, d) order, as the projections' output it goes back to. One thread per pair, as rotary_. */                \
extern "C" __global__ void rotary_backward_##SUFFIX(const T* dy, const T* cos, const T* sin, T* dx, int heads,        \
    int tokens, int d, long long db, long long dh, long long dt, long long cb, long long ct, long long pairs)         \
{                                                                                                                     \
    long long p = (long long)blockIdx.x * blockDim.x + threadIdx.x;                                                   \
    if (p >= pairs) return;                                                                                           \
    unsigned int b, hh, t, j, half = (unsigned int)d >> 1;                                                            \
    T* dxr = dx + rotary_pair(p, d, heads, tokens, b, hh, t, j);                                                      \
    const T* dyr = dy + b * db + hh * dh + t * dt;                                                                    \
    long long c = b * cb + t * ct;                                                                                    \
    float lo = TO_F32(dyr[j]), hi = TO_F32(dyr[j + half]);                                                            \
    dxr[j] = FROM_F32(TO_F32(FROM_F32(lo * TO_F32(cos[c + j]))) + TO_F32(FROM_F32(hi * TO_F32(sin[c + j + half])))); \
    dxr[j + half] = FROM_F32(TO_F32(FROM_F32(hi * TO_F32(cos[c + j + half]))) + TO_F32(FROM_F32(lo * TO_F32(sin[c + j])))); \
}                                                                                                                     \
                                                                                                                      \
/* Cross-entropy of one row of logits x (a chunk's lm_head output, V wide) against its target, and the row's gradient  \
   for the upstream gradient up of the loss sum, written over x (nothing else reads the logits): as torch's fp32       \
   log_softmax, nll_loss (sum) and their backward compute them: m = max x, s = sum exp(x - m), ls = (x - m) - log s;   \
   loss = -ls[t]; dx = T(g - exp(ls) * sum g) with g = -up at t and 0 elsewhere (sum g = -up). Only the order of s's sum \
   differs from torch's block reduction: the loss within a few fp32 ulps, a gradient within one rounding step of x's  \
   dtype. A row whose target is the ignore index (-100) has loss 0 and gradient 0, as in torch. One block a row; 16      \
   values a thread where wide (V % 16 == 0, aligned). */                                                              \
__device__ __forceinline__ float ce_grad_##SUFFIX(float x, bool target, float m, float logsum, float neg_up)         \
{                                                                                                                     \
    float e = expf((x - m) - logsum);                                                                                 \
    return (target ? neg_up : 0.0f) - e * neg_up;                                                                     \
}                                                                                                                     \
extern "C" __global__ void cross_entropy_grad_##SUFFIX(T* x, const long long* targets, const float* upstream,       \
    float* loss, int v, int wide)                                                                                     \
{                                                                                                                     \
    __shared__ float shared[32];                                                                                      \
    T* row = x + (long long)blockIdx.x * v;                                                                           \
    long long t = targets[blockIdx.x];                                                                                \
    bool ignored = t < 0 || t >= v;                                                                                   \
    float xt = ignored ? 0.0f : TO_F32(row[t]);     /* read by every thread before the barriers below, then written */ \
    float m = __int_as_float(0xff800000);                                                                             \
    if (wide) for (int c = threadIdx.x * 16; c < v; c += blockDim.x * 16) {                                           \
        float a[16];                                                                                                  \
        load16_##SUFFIX(row + c, a);                                                                                  \
        _Pragma("unroll") for (int k = 0; k < 16; k++) m = fmaxf(m, a[k]);                                            \
    }                                                                                                                 \
    else for (int c = threadIdx.x; c < v; c += blockDim.x) m = fmaxf(m, TO_F32(row[c]));                              \
    m = block_max(m, shared);                                                                                         \
    float s = 0.0f;                                                                                                   \
    if (wide) for (int c = threadIdx.x * 16; c < v; c += blockDim.x * 16) {                                           \
        float a[16];                                                                                                  \
        load16_##SUFFIX(row + c, a);                                                                                  \
        _Pragma("unroll") for (int k = 0; k < 16; k++) s += expf(a[k] - m);                                           \
    }                                                                                                                 \
    else for (int c = threadIdx.x; c < v; c += blockDim.x) s += expf(TO_F32(row[c]) - m);                             \
    s = block_sum(s, shared);                                                                                         \
    float logsum = logf(s);                                                                                           \
    if (threadIdx.x == 0) loss[blockIdx.x] = ignored ? 0.0f : -((xt - m) - logsum);                                   \
    float neg_up = ignored ? 0.0f : -upstream[0];                                                                     \
    if (wide) for (int c = threadIdx.x * 16; c < v; c += blockDim.x * 16) {                                           \
        float a[16];                                                                                                  \
        load16_##SUFFIX(row + c, a);                                                                                  \
        _Pragma("unroll") for (int k = 0; k < 16; k++) a[k] = ce_grad_##SUFFIX(a[k], c + k == t, m, logsum, neg_up);  \
        store16_##SUFFIX(row + c, a);                                                                                 \
    }                                                                                                                 \
    else for (int c = threadIdx.x; c < v; c += blockDim.x)                                                            \
        row[c] = FROM_F32(ce_grad_##SUFFIX(TO_F32(row[c]), c == t, m, logsum, neg_up));                               \
}

DEFINE_TRAINING_KERNELS(f32, float, load_f32, store_f32)
DEFINE_TRAINING_KERNELS(bf16, u16, bf16_to_f32, f32_to_bf16)
DEFINE_TRAINING_KERNELS(f16, u16, f16_to_f32, f32_to_f16)
