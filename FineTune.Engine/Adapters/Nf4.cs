using FineTune.Engine.Backend;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Adapters;

/// <summary>
/// A weight held as NF4 the way bitsandbytes' quantize_4bit(quant_type="nf4", blocksize=64) holds it: two 4-bit
/// codes per byte (first value in the high nibble) and one absmax per 64 values. With double quantization
/// (compress_statistics=True, bnb_4bit_use_double_quant) the absmaxes are themselves quantized: (absmax - mean) as
/// 8-bit codes of the signed dynamic map in blocks of 256, each block with its own fp32 absmax; without it they
/// stay fp32 (<see cref="Absmax"/>).
/// </summary>
/// <param name="Packed">(ceil(n/2),) uint8.</param>
/// <param name="AbsmaxCodes">(blocks,) uint8: indices into <see cref="Nf4.DynamicMap"/>; null without double quantization.</param>
/// <param name="NestedAbsmax">(ceil(blocks/256),) fp32; null without double quantization.</param>
/// <param name="Offset">() fp32: the mean that was subtracted from the absmaxes; null without double quantization.</param>
/// <param name="Shape">The original shape, e.g. (out, in).</param>
public sealed record Nf4Data(Tensor Packed, Tensor? AbsmaxCodes, Tensor? NestedAbsmax, Tensor? Offset, long[] Shape) : IDisposable
{
    /// <summary>(blocks,) fp32, when the absmaxes are not double-quantized.</summary>
    public Tensor? Absmax { get; init; }

    public bool DoubleQuantized => AbsmaxCodes is not null;

    public long NumElements => Shape.Aggregate(1L, (a, b) => a * b);

    public void Dispose()
    {
        Packed.Dispose();
        AbsmaxCodes?.Dispose();
        NestedAbsmax?.Dispose();
        Offset?.Dispose();
        Absmax?.Dispose();
    }
}

/// <summary>NF4 quantization and dequantization equal to bitsandbytes (see tools/golden/nf4_golden.py).</summary>
public static class Nf4
{
    /// <summary>
    /// The loader hook for QLoRA (ModelLoadOptions.LoadLinearWeight): every linear but lm_head takes its checkpoint
    /// weight as NF4 as it is read, so the 16-bit model never sits whole on the device (bitsandbytes skips lm_head too).
    /// </summary>
    public static Func<string, LoraLinear, Tensor, bool> QuantizeOnLoad(ScalarType computeDtype, bool doubleQuantization = true) =>
        (name, layer, weight) =>
        {
            if (name == "lm_head") return false;
            layer.QuantizeWeight(weight, computeDtype, doubleQuantization);
            return true;
        };

    public const int BlockSize = 64;
    public const int NestedBlockSize = 256;

    /// <summary>The 16 NF4 values (bitsandbytes' NF4 table, fp32).</summary>
    public static readonly float[] Code =
    [
        -1.0f, -0.6961928009986877f, -0.5250730514526367f, -0.39491748809814453f,
        -0.28444138169288635f, -0.18477343022823334f, -0.09105003625154495f, 0.0f,
        0.07958029955625534f, 0.16093020141124725f, 0.24611230194568634f, 0.33791524171829224f,
        0.44070982933044434f, 0.5626170039176941f, 0.7229568362236023f, 1.0f,
    ];

    /// <summary>bitsandbytes' create_dynamic_map(signed=True, max_exponent_bits=7, total_bits=8): 256 sorted fp32 values.</summary>
    public static float[] DynamicMap => _dynamicMap ??= CreateDynamicMap();
    private static float[]? _dynamicMap;

    // The code tables on each device, made once: dequantization runs in every forward and backward.
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<(DeviceType, int), Tensor> DynamicMapTables = new();
    private static readonly System.Collections.Concurrent.ConcurrentDictionary<(DeviceType, int), Tensor> PairTables = new();

    /// <summary><see cref="DynamicMap"/> as a (256,) fp32 tensor on the device.</summary>
    internal static Tensor DynamicMapTable(Device device) =>
        DynamicMapTables.GetOrAdd((device.type, device.index), _ => tensor(DynamicMap, device: device).DetachFromDisposeScope());

    /// <summary>Row b holds the two NF4 values packed in byte b: (code[b &gt;&gt; 4], code[b &amp; 15]), fp32.</summary>
    private static Tensor PairTable(Device device) =>
        PairTables.GetOrAdd((device.type, device.index), _ =>
        {
            var pairs = new float[256 * 2];
            for (int b = 0; b < 256; b++) (pairs[2 * b], pairs[2 * b + 1]) = (Code[b >> 4], Code[b & 15]);
            return tensor(pairs, [256, 2], device: device).DetachFromDisposeScope();
        });

    // Elements per argmin chunk: bounds the (chunk, 16) or (chunk, 256) distance matrix.
    private const long ChunkElements = 1 << 18;

    // Values quantized at a time: whole 64-blocks, an even count (so no pair of packed values straddles two slices).
    internal const long QuantizeSliceElements = 1L << 22;

    /// <summary>
    /// Quantizes a weight (any float dtype, any device); returns tensors on the same device.
    /// <paramref name="doubleQuantization"/>: bitsandbytes' compress_statistics (the tutorial's bnb_4bit_use_double_quant=True).
    /// </summary>
    public static Nf4Data Quantize(Tensor weight, bool doubleQuantization = true) => Quantize(weight, doubleQuantization, QuantizeSliceElements);

    /// <summary><see cref="Quantize(Tensor, bool)"/> <paramref name="sliceElements"/> values at a time (whole 64-blocks; tests compare slice sizes).</summary>
    internal static Nf4Data Quantize(Tensor weight, bool doubleQuantization, long sliceElements)
    {
        if (sliceElements <= 0 || sliceElements % BlockSize != 0) throw new ArgumentOutOfRangeException(nameof(sliceElements), sliceElements, "Slices hold whole 64-blocks.");
        if (!is_floating_point(weight))
            throw new ArgumentException($"NF4 quantizes float weights; this one is {weight.dtype}.", nameof(weight));
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var device = weight.device;
        long n = weight.numel();
        var flat = weight.reshape(-1);                                          // (n)
        var code = tensor(Code, device: device);
        // In slices of whole 64-blocks (an even count of values): the fp32 copy, the scaled values and the nearest-code search
        // of a 7B MLP weight took ~1.4 GB at once, memory the caching allocator then kept for the whole run (a CUDA graph's
        // private pool cannot reuse it). Every block is quantized on its own, so the slices give the same bytes.
        var absmaxParts = new List<Tensor>();
        var packedParts = new List<Tensor>();
        for (long start = 0; start < n; start += sliceElements)
        {
            using var sliceScope = NewDisposeScope();
            long end = Math.Min(n, start + sliceElements);
            var slice = flat[(int)start..(int)end].to(ScalarType.Float32);      // (s)
            var sliceAbsmax = BlockAbsmax(slice, BlockSize);                    // (s / 64)
            var scaled = ScaleBlocks(slice, sliceAbsmax, BlockSize);            // (s) in [-1, 1]
            if (scaled.shape[0] % 2 != 0) scaled = nn.functional.pad(scaled, [0, 1]); // pairs for packing (the last slice only)
            var q = NearestCode(scaled, code);                                  // (s') uint8 in 0..15
            var pairs = q.view(-1, 2);                                          // (s'/2, 2)
            var slicePacked = pairs[.., 0] * 16 + pairs[.., 1];                 // uint8, high nibble first
            absmaxParts.Add(sliceScope.MoveToOuter(sliceAbsmax));
            packedParts.Add(sliceScope.MoveToOuter(slicePacked));
        }
        var absmax = absmaxParts.Count == 1 ? absmaxParts[0] : cat(absmaxParts, 0); // (blocks)
        var packed = packedParts.Count == 1 ? packedParts[0] : cat(packedParts, 0); // (⌈n/2⌉)
        if (!doubleQuantization)
        {
            var single = new Nf4Data(packed, null, null, null, weight.shape) { Absmax = absmax };
            scope.MoveToOuter(packed, absmax);
            return single;
        }

        // Double quantization of the absmaxes (compress_statistics=True).
        var offset = absmax.mean();
        var centred = absmax - offset;
        var absmax2 = BlockAbsmax(centred, NestedBlockSize);
        var scaled2 = ScaleBlocks(centred, absmax2, NestedBlockSize);
        var codes2 = NearestCode(scaled2, DynamicMapTable(device));

        var result = new Nf4Data(packed, codes2, absmax2, offset, weight.shape);
        scope.MoveToOuter(packed, codes2, absmax2, offset);
        return result;
    }

    /// <summary>The fp32 absmax of every 64-block, as bitsandbytes' dequantize_blockwise(...) + offset gives it.</summary>
    public static Tensor DequantizeAbsmax(Nf4Data data)
    {
        if (!data.DoubleQuantized) return data.Absmax!.alias();                  // a handle of the caller's own
        using var scope = NewDisposeScope();
        var absmax = DynamicMapTable(data.AbsmaxCodes!.device).take(data.AbsmaxCodes.to(ScalarType.Int64)); // (blocks)
        ScaleBackInPlace(absmax, data.NestedAbsmax!, NestedBlockSize);
        absmax.PlusInPlace(data.Offset!);
        return scope.MoveToOuter(absmax);
    }

    /// <summary>
    /// The weight in <paramref name="dtype"/>, computed like bitsandbytes' CUDA kernel:
    /// fp32 code × fp32 absmax, rounded once to dtype.
    /// </summary>
    /// <remarks>
    /// Runs twice per layer and step in QLoRA (forward and backward), so it is written for memory and kernel count:
    /// one lookup of a (256, 2) table turns each packed byte into its two fp32 values (no int64 nibble tensors), and
    /// the absmax scaling happens in place. For a 7B MLP weight the transient peak is ~0.55 GB (it was ~1.3 GB).
    /// </remarks>
    public static Tensor Dequantize(Nf4Data data, ScalarType dtype) =>
        Kernels.FusedOps.Nf4Dequantize(data, dtype) ?? DequantizeWithTorch(data, dtype);

    /// <summary><see cref="Dequantize"/> through torch ops: the CPU path, and the reference of the CUDA kernel.</summary>
    internal static Tensor DequantizeWithTorch(Nf4Data data, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        long n = data.NumElements;
        var absmax = DequantizeAbsmax(data);                                    // (blocks)
        var pairTable = PairTable(data.Packed.device);                          // (256, 2): code[b >> 4], code[b & 15]
        var values = pairTable.index_select(0, data.Packed.to(ScalarType.Int32)).view(-1); // (n') fp32, high nibble first
        if (values.shape[0] != n) values = values[..(int)n];
        ScaleBackInPlace(values, absmax, BlockSize);
        var w = values.to(dtype).reshape(data.Shape);
        return scope.MoveToOuter(w);
    }

    /// <summary>Max |x| per block; the last block may be partial (bitsandbytes handles a remainder the same way).</summary>
    private static Tensor BlockAbsmax(Tensor flat, int blockSize)
    {
        long n = flat.shape[0];
        long full = n / blockSize, rem = n % blockSize;
        var parts = new List<Tensor>();
        if (full > 0) parts.Add(flat[..(int)(full * blockSize)].view(full, blockSize).abs().amax([1]));
        if (rem > 0) parts.Add(flat[(int)(full * blockSize)..].abs().amax([0]).reshape(1));
        return parts.Count == 1 ? parts[0] : cat(parts, 0);
    }

    /// <summary>clamp(x * (1/absmax), -1, 1) per block, as in bitsandbytes' reference kernels.</summary>
    private static Tensor ScaleBlocks(Tensor flat, Tensor absmax, int blockSize)
    {
        var inverse = absmax.reciprocal();
        return ScaleBack(flat, inverse, blockSize).clamp(-1, 1);
    }

    /// <summary>x * s[block] for every element, in a new tensor (flat may be the caller's own weight).</summary>
    private static Tensor ScaleBack(Tensor flat, Tensor perBlock, int blockSize)
    {
        var scaled = flat.clone();
        ScaleBackInPlace(scaled, perBlock, blockSize);
        return scaled;
    }

    /// <summary>flat[i] *= s[block of i], in place.</summary>
    private static void ScaleBackInPlace(Tensor flat, Tensor perBlock, int blockSize)
    {
        long n = flat.shape[0];
        long full = n / blockSize, rem = n % blockSize;
        if (full > 0) flat[..(int)(full * blockSize)].view(full, blockSize).mul_(perBlock[..(int)full].view(full, 1));
        if (rem > 0) flat[(int)(full * blockSize)..].mul_(perBlock[(int)full]);
    }

    /// <summary>argmin |x - code| per element (first index on ties), in chunks; bytes (the code has at most 256 values).</summary>
    private static Tensor NearestCode(Tensor x, Tensor code)
    {
        long n = x.shape[0];
        var parts = new List<Tensor>();
        for (long start = 0; start < n; start += ChunkElements)
        {
            long end = Math.Min(n, start + ChunkElements);
            using var chunkScope = NewDisposeScope();
            var chunk = x[(int)start..(int)end];
            var index = (chunk.unsqueeze(1) - code.unsqueeze(0)).abs().argmin(1).to(ScalarType.Byte); // (chunk)
            parts.Add(chunkScope.MoveToOuter(index));
        }
        return parts.Count == 1 ? parts[0] : cat(parts, 0);
    }

    /// <summary>
    /// create_dynamic_map(signed=True): for exponents 10^-6 … 10^0, the midpoints of fp32 torch.linspace(0.1, 1, 2^i + 1)
    /// scaled by the exponent, both signs; plus 0 and 1. torch.linspace itself is used because libtorch's
    /// vectorised kernel rounds some points differently from the textbook formula; fp32 arithmetic otherwise.
    /// </summary>
    internal static float[] CreateDynamicMap()
    {
        const int maxExponentBits = 7;
        var data = new List<float>();
        float[] exponents = [1e-6f, 1e-5f, 1e-4f, 1e-3f, 1e-2f, 1e-1f, 1f];
        for (int i = 0; i < maxExponentBits; i++)
        {
            int fractionItems = (1 << i) + 1;
            float[] boundaries;
            using (var b = linspace(0.1, 1.0, fractionItems, dtype: ScalarType.Float32, device: CPU))
                boundaries = b.data<float>().ToArray();
            for (int j = 0; j < fractionItems - 1; j++)
            {
                float mean = (boundaries[j] + boundaries[j + 1]) / 2.0f;
                float value = exponents[i] * mean;
                data.Add(value);
                data.Add(-value);
            }
        }
        data.Add(0f);
        data.Add(1f);
        data.Sort();
        return [.. data];
    }
}
