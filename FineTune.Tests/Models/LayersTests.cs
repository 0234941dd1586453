using FineTune.Engine.Backend;
using FineTune.Engine.Models;
using static TorchSharp.torch;

namespace FineTune.Tests.Models;

/// <summary>The shared layers against values worked out by hand.</summary>
public class LayersTests
{
    public LayersTests() => _ = ComputeBackend.Current;

    [Fact]
    public void RmsNorm_divides_by_the_root_mean_square_and_scales_by_the_weight()
    {
        using var scope = NewDisposeScope();
        using var norm = new RmsNorm(2, eps: 0);
        norm.LoadWeight(tensor(new float[] { 2f, 0.5f }));
        // x = (3, 4): mean(x²) = 12.5, rms = 3.5355339; x / rms = (0.8485281, 1.1313709)
        var y = norm.forward(tensor(new float[] { 3f, 4f }, [1, 1, 2]));
        var values = y.data<float>().ToArray();
        Assert.Equal(1.6970563, values[0], 1e-5);
        Assert.Equal(0.5656854, values[1], 1e-5);
    }

    [Fact]
    public void RmsNorm_computes_in_fp32_and_returns_the_input_dtype()
    {
        using var scope = NewDisposeScope();
        using var norm = new RmsNorm(3, eps: 1e-6);
        norm.LoadWeight(ones(3, dtype: ScalarType.BFloat16));
        var x = tensor(new float[] { 300f, 400f, 0f }).to(ScalarType.BFloat16);
        var y = norm.forward(x);
        Assert.Equal(ScalarType.BFloat16, y.dtype);
        var expected = tensor(new float[] { 300f, 400f, 0f }) / Math.Sqrt((300.0 * 300 + 400.0 * 400) / 3);
        Assert.True((y.to(ScalarType.Float32) - expected).abs().max().item<float>() < 1e-2);
    }

    /// <summary>HF's rotate_half, the reference the engine's roll form must equal: (x1, x2) → (−x2, x1) over the last dimension's halves.</summary>
    private static Tensor HfRotateHalf(Tensor x)
    {
        long half = x.shape[^1] / 2;
        return cat([x.narrow(-1, half, half).neg(), x.narrow(-1, 0, half)], -1);
    }

    [Fact]
    public void Rotate_half_and_rope_rotate_each_pair_by_position_times_frequency()
    {
        using var scope = NewDisposeScope();
        var x = tensor(new float[] { 1f, 2f, 3f, 4f }, [1, 1, 1, 4]);
        Assert.Equal(new[] { -3f, -4f, 1f, 2f }, HfRotateHalf(x).data<float>().ToArray());

        // head_dim 4, θ = 100: inv_freq = (1, 0.1); position 2 → angles (2, 0.2) for pairs (x0, x2) and (x1, x3).
        var invFreq = RotaryEmbedding.InverseFrequencies(4, new RopeSettings(100.0));
        Assert.Equal(new[] { 1f, 0.1f }, invFreq.data<float>().ToArray());
        using var rope = new RotaryEmbedding(4, new RopeSettings(100.0), CPU);
        var (cos, sin) = rope.Compute(tensor(new long[] { 2 }, [1, 1]), ScalarType.Float32);
        var (headCos, signedSin) = AttentionOps.RotaryTables(cos, sin);
        var y = AttentionOps.ApplyRotary(x, headCos, signedSin).data<float>().ToArray();
        Assert.Equal(1 * Math.Cos(2) - 3 * Math.Sin(2), y[0], 1e-5);
        Assert.Equal(2 * Math.Cos(0.2) - 4 * Math.Sin(0.2), y[1], 1e-5);
        Assert.Equal(3 * Math.Cos(2) + 1 * Math.Sin(2), y[2], 1e-5);
        Assert.Equal(4 * Math.Cos(0.2) + 2 * Math.Sin(0.2), y[3], 1e-5);
    }

    [Fact]
    public void One_query_attends_each_kv_heads_group_without_repeating_keys_as_hf_repeat_kv_does()
    {
        using var scope = NewDisposeScope();
        var q = randn([2, 6, 1, 8], generator: new Generator(3));   // (B, nH, 1, hD), 3 query heads per kv head
        var k = randn([2, 2, 5, 8], generator: new Generator(4));   // (B, nKV, S, hD)
        var v = randn([2, 2, 5, 8], generator: new Generator(5));
        // HF: repeat_kv (each kv head for its group of query heads), then attention over all S keys.
        var kk = k.unsqueeze(2).expand(2, 2, 3, 5, 8).reshape(2, 6, 5, 8);
        var vv = v.unsqueeze(2).expand(2, 2, 3, 5, 8).reshape(2, 6, 5, 8);
        var scores = q.matmul(kk.transpose(2, 3)) / Math.Sqrt(8);
        var expected = scores.softmax(-1).matmul(vv).reshape(2, 1, 48);                  // (B, 1, nH·hD)
        var y = AttentionOps.Attend(q, k, v, new AttentionMask(null, false));
        Assert.Equal(new long[] { 2, 1, 48 }, y.shape);
        Assert.True(y.allclose(expected, 1e-5, 1e-6));
    }

    [Fact]
    public void Rope_by_roll_equals_hf_rotate_half_bit_for_bit()
    {
        using var scope = NewDisposeScope();
        using var rope = new RotaryEmbedding(64, new RopeSettings(1e6), CPU);
        var positions = arange(0, 37, dtype: ScalarType.Int64).unsqueeze(0);        // (1, 37)
        foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16 })
        {
            var x = randn([1, 3, 37, 64], generator: new Generator(5)).to(dtype);      // (B, nH, T, hD)
            var (cos, sin) = rope.Compute(positions, dtype);                            // (B, T, hD)
            var hf = x * cos.unsqueeze(1) + HfRotateHalf(x) * sin.unsqueeze(1);
            var (headCos, signedSin) = AttentionOps.RotaryTables(cos, sin);
            Assert.True(AttentionOps.ApplyRotary(x, headCos, signedSin).eq(hf).all().item<bool>(), dtype.ToString());
        }
    }

    [Fact]
    public void Llama3_scaling_keeps_high_frequencies_divides_low_ones_and_blends_between()
    {
        using var scope = NewDisposeScope();
        // head_dim 8, θ = 10000: inv_freq = (1, 0.1, 0.01, 0.001); wavelengths 2π/f = (6.28, 62.8, 628, 6283).
        // original context 64, low 1, high 4: wavelen < 16 kept, > 64 divided by 8, between smoothed.
        var rope = new RopeSettings(10000.0, "llama3", Factor: 8, LowFreqFactor: 1, HighFreqFactor: 4, OriginalMaxPositionEmbeddings: 64);
        var f = RotaryEmbedding.InverseFrequencies(8, rope).data<float>().ToArray();
        Assert.Equal(1.0, f[0], 1e-5);
        // 0.1: wavelen 62.83 is in [16, 64]: smooth = (64/62.83 − 1)/3 = 0.0062; f = (1−s)·0.1/8 + s·0.1
        double s = (64 / (2 * Math.PI / 0.1) - 1) / 3;
        Assert.Equal((1 - s) * 0.1 / 8 + s * 0.1, f[1], 1e-5);
        Assert.Equal(0.01 / 8, f[2], 1e-5);
        Assert.Equal(0.001 / 8, f[3], 1e-5);
    }

    [Fact]
    public void Masks_combine_causality_padding_and_a_sliding_window()
    {
        using var scope = NewDisposeScope();
        var padding = tensor(new long[] { 1, 1, 1, 0 }, [1, 4]);
        using var builder = new AttentionMaskBuilder(4, 0, padding, ScalarType.Float32, CPU);
        var full = builder.For(null).Additive!;
        var allowed = full.eq(0).to(ScalarType.Int32).reshape(4, 4).data<int>().ToArray();
        Assert.Equal(new[] { 1, 0, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 1, 0 }, allowed);

        using var windowed = new AttentionMaskBuilder(4, 0, null, ScalarType.Float32, CPU);
        var w = windowed.For(2).Additive!.eq(0).to(ScalarType.Int32).reshape(4, 4).data<int>().ToArray();
        Assert.Equal(new[] { 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1, 0, 0, 0, 1, 1 }, w);

        using var plain = new AttentionMaskBuilder(4, 0, null, ScalarType.Float32, CPU);
        Assert.True(plain.For(null).IsCausal);
        using var oneToken = new AttentionMaskBuilder(1, 5, null, ScalarType.Float32, CPU);
        Assert.Null(oneToken.For(null).Additive);
    }
}
