using System.Buffers.Binary;

namespace FineTune.Engine.Export;

/// <summary>The ggml tensor types we write (ggml.h / gguf-py GGMLQuantizationType numbering).</summary>
public enum GgmlType : uint
{
    F32 = 0,
    F16 = 1,
    /// <summary>Blocks of 32: fp16 scale d, then 16 bytes of 4-bit codes (element j low nibble, element j+16 high nibble); x = d·(q − 8).</summary>
    Q4_0 = 2,
    /// <summary>Blocks of 32: fp16 scale d, then 32 int8 codes; x = d·q.</summary>
    Q8_0 = 8,
}

/// <summary>What a GGUF file's weights mostly are (llama.cpp's LLAMA_FTYPE, GGUF key general.file_type).</summary>
public enum GgufFileType : uint
{
    F16 = 1,
    Q4_0 = 2,
    Q8_0 = 7,
}

/// <summary>Block sizes and byte sizes of the ggml types (gguf-py GGML_QUANT_SIZES).</summary>
public static class GgmlTypes
{
    public static (int BlockSize, int TypeSize) Traits(GgmlType type) => type switch
    {
        GgmlType.F32 => (1, 4),
        GgmlType.F16 => (1, 2),
        GgmlType.Q4_0 => (32, 2 + 16),
        GgmlType.Q8_0 => (32, 2 + 32),
        _ => throw new ArgumentOutOfRangeException(nameof(type), type, "Not a type this writer knows."),
    };

    /// <summary>Bytes of one row of <paramref name="rowLength"/> elements (the innermost dimension).</summary>
    public static long RowBytes(GgmlType type, long rowLength)
    {
        var (block, size) = Traits(type);
        if (rowLength % block != 0)
            throw new ArgumentException($"A row of {rowLength} elements is not a whole number of {type} blocks of {block}.", nameof(rowLength));
        return rowLength / block * size;
    }

    /// <summary>Bytes of a tensor with a PyTorch-order shape (the last dimension is the row).</summary>
    public static long ByteSize(GgmlType type, IReadOnlyList<long> shape)
    {
        long rows = 1;
        for (int i = 0; i < shape.Count - 1; i++) rows *= shape[i];
        return rows * RowBytes(type, shape.Count == 0 ? 1 : shape[^1]);
    }

    /// <summary>Whether rows of this length can be stored as the type (block-quantized types need whole blocks).</summary>
    public static bool Fits(GgmlType type, long rowLength) => rowLength % Traits(type).BlockSize == 0;
}

/// <summary>
/// ggml's reference quantizers (ggml-quants.c quantize_row_q8_0_ref / quantize_row_q4_0_ref, as gguf-py's quants.py
/// reproduces them), so the blocks read back exactly as llama.cpp expects.
/// </summary>
public static class GgmlQuantization
{
    public const int BlockSize = 32;

    /// <summary>Quantizes whole rows of fp32 values (length a multiple of 32) into <paramref name="destination"/>.</summary>
    public static void Quantize(GgmlType type, ReadOnlySpan<float> values, Span<byte> destination)
    {
        switch (type)
        {
            case GgmlType.Q8_0: QuantizeQ8_0(values, destination); break;
            case GgmlType.Q4_0: QuantizeQ4_0(values, destination); break;
            case GgmlType.F16:
                for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteHalfLittleEndian(destination[(2 * i)..], (Half)values[i]);
                break;
            case GgmlType.F32:
                for (int i = 0; i < values.Length; i++) BinaryPrimitives.WriteSingleLittleEndian(destination[(4 * i)..], values[i]);
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, "Not a type this writer knows.");
        }
    }

    /// <summary>Q8_0: d = max|x| / 127, q = round-half-away-from-zero(x / d) as int8.</summary>
    public static void QuantizeQ8_0(ReadOnlySpan<float> values, Span<byte> destination)
    {
        CheckBlocks(values.Length, destination.Length, 34);
        for (int b = 0; b < values.Length / BlockSize; b++)
        {
            var x = values.Slice(b * BlockSize, BlockSize);
            var block = destination.Slice(b * 34, 34);
            float amax = 0;
            foreach (float v in x) amax = MathF.Max(amax, MathF.Abs(v));
            float d = amax / 127f;
            float id = d != 0 ? 1f / d : 0f;
            BinaryPrimitives.WriteHalfLittleEndian(block, (Half)d);
            for (int j = 0; j < BlockSize; j++) block[2 + j] = unchecked((byte)(sbyte)RoundAwayFromZero(x[j] * id));
        }
    }

    /// <summary>
    /// Q4_0: the element of largest magnitude m (with its sign), d = m / −8, q = min(15, trunc(x / d + 8.5));
    /// element j (j &lt; 16) in the low nibble of byte j, element j + 16 in its high nibble.
    /// </summary>
    public static void QuantizeQ4_0(ReadOnlySpan<float> values, Span<byte> destination)
    {
        CheckBlocks(values.Length, destination.Length, 18);
        for (int b = 0; b < values.Length / BlockSize; b++)
        {
            var x = values.Slice(b * BlockSize, BlockSize);
            var block = destination.Slice(b * 18, 18);
            float amax = 0, max = 0;
            foreach (float v in x)
            {
                if (MathF.Abs(v) > amax)
                {
                    amax = MathF.Abs(v);
                    max = v;
                }
            }
            float d = max / -8f;
            float id = d != 0 ? 1f / d : 0f;
            BinaryPrimitives.WriteHalfLittleEndian(block, (Half)d);
            for (int j = 0; j < BlockSize / 2; j++)
            {
                // gguf-py computes x·id + 8.5 in float64 (the C reference's result depends on FMA; this is its choice).
                int q0 = Math.Clamp((int)Math.Truncate((double)x[j] * id + 8.5), 0, 15);
                int q1 = Math.Clamp((int)Math.Truncate((double)x[j + BlockSize / 2] * id + 8.5), 0, 15);
                block[2 + j] = (byte)(q0 | (q1 << 4));
            }
        }
    }

    /// <summary>Reads blocks back to fp32 (ggml's dequantize_row_*), for checks.</summary>
    public static float[] Dequantize(GgmlType type, ReadOnlySpan<byte> blocks, int count)
    {
        var result = new float[count];
        switch (type)
        {
            case GgmlType.Q8_0:
                for (int b = 0; b < count / BlockSize; b++)
                {
                    float d = (float)BinaryPrimitives.ReadHalfLittleEndian(blocks[(b * 34)..]);
                    for (int j = 0; j < BlockSize; j++) result[b * BlockSize + j] = d * (sbyte)blocks[b * 34 + 2 + j];
                }
                break;
            case GgmlType.Q4_0:
                for (int b = 0; b < count / BlockSize; b++)
                {
                    float d = (float)BinaryPrimitives.ReadHalfLittleEndian(blocks[(b * 18)..]);
                    for (int j = 0; j < BlockSize / 2; j++)
                    {
                        byte q = blocks[b * 18 + 2 + j];
                        result[b * BlockSize + j] = d * ((q & 0x0F) - 8);
                        result[b * BlockSize + j + BlockSize / 2] = d * ((q >> 4) - 8);
                    }
                }
                break;
            default:
                throw new ArgumentOutOfRangeException(nameof(type), type, "Only Q8_0 and Q4_0 are dequantized here.");
        }
        return result;
    }

    /// <summary>roundf: halves away from zero (gguf-py np_roundf: floor(a) + floor(2·(a − floor(a))), with the sign).</summary>
    private static float RoundAwayFromZero(float v)
    {
        float a = MathF.Abs(v);
        float floored = MathF.Floor(a);
        float b = floored + MathF.Floor(2 * (a - floored));
        return MathF.CopySign(b, v);
    }

    private static void CheckBlocks(int values, int bytes, int blockBytes)
    {
        if (values % BlockSize != 0) throw new ArgumentException($"{values} values are not whole blocks of {BlockSize}.");
        if (bytes < values / BlockSize * blockBytes) throw new ArgumentException($"{bytes} bytes cannot hold {values / BlockSize} blocks of {blockBytes}.");
    }
}
