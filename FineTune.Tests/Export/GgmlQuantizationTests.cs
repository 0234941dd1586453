using System.Buffers.Binary;
using FineTune.Engine.Export;

namespace FineTune.Tests.Export;

/// <summary>ggml's block layouts, worked by hand from ggml-quants.c's reference quantizers.</summary>
public class GgmlQuantizationTests
{
    private static readonly float[] Ramp = Enumerable.Range(0, 32).Select(j => (float)(j - 16)).ToArray(); // −16 … 15

    [Fact]
    public void Q8_0_block_is_fp16_scale_then_32_rounded_int8()
    {
        var block = new byte[34];
        GgmlQuantization.QuantizeQ8_0(Ramp, block);
        float d = 16f / 127f;
        Assert.Equal((Half)d, BinaryPrimitives.ReadHalfLittleEndian(block));
        Assert.Equal(-127, (sbyte)block[2]);                                        // −16 / d
        Assert.Equal((sbyte)MathF.Round(15 / d, MidpointRounding.AwayFromZero), (sbyte)block[2 + 31]);
        Assert.Equal(0, (sbyte)block[2 + 16]);
        var back = GgmlQuantization.Dequantize(GgmlType.Q8_0, block, 32);
        for (int j = 0; j < 32; j++) Assert.InRange(back[j] - Ramp[j], -d / 2 - 1e-3f, d / 2 + 1e-3f);
    }

    [Fact]
    public void Q4_0_block_is_fp16_scale_then_low_nibbles_first_half_high_nibbles_second_half()
    {
        var block = new byte[18];
        GgmlQuantization.QuantizeQ4_0(Ramp, block);
        // The largest magnitude is −16, so d = −16 / −8 = 2 and q = trunc(x / 2 + 8.5), at most 15.
        Assert.Equal((Half)2f, BinaryPrimitives.ReadHalfLittleEndian(block));
        for (int j = 0; j < 16; j++)
        {
            int low = (int)Math.Truncate(Ramp[j] / 2 + 8.5), high = Math.Min(15, (int)Math.Truncate(Ramp[j + 16] / 2 + 8.5));
            Assert.Equal((byte)(low | (high << 4)), block[2 + j]);
        }
        Assert.Equal(0x80, block[2]); // x0 = −16 → 0 (low), x16 = 0 → 8 (high)
        var back = GgmlQuantization.Dequantize(GgmlType.Q4_0, block, 32);
        Assert.Equal(-16f, back[0]);
        Assert.Equal(14f, back[31]); // 15 clips to code 15 → 2·(15 − 8)
    }

    [Fact]
    public void A_zero_block_has_zero_scale_and_codes()
    {
        var q8 = new byte[34];
        var q4 = new byte[18];
        GgmlQuantization.QuantizeQ8_0(new float[32], q8);
        GgmlQuantization.QuantizeQ4_0(new float[32], q4);
        Assert.All(q8, b => Assert.Equal(0, b));
        Assert.All(q4[2..], b => Assert.Equal(0x88, b)); // code 8 is zero in Q4_0
    }

    [Fact]
    public void Byte_sizes_follow_the_block_formats()
    {
        Assert.Equal(64 / 32 * 34 * 3, GgmlTypes.ByteSize(GgmlType.Q8_0, [3, 64]));
        Assert.Equal(64 / 32 * 18 * 3, GgmlTypes.ByteSize(GgmlType.Q4_0, [3, 64]));
        Assert.Equal(2 * 3 * 10, GgmlTypes.ByteSize(GgmlType.F16, [3, 10]));
        Assert.Throws<ArgumentException>(() => GgmlTypes.RowBytes(GgmlType.Q8_0, 40));
    }
}
