using System.Text.Json;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using static TorchSharp.torch;

namespace FineTune.Tests.Adapters;

/// <summary>NF4 against goldens from tools/golden/nf4_golden.py (bitsandbytes' reference algorithm).</summary>
public class Nf4Tests
{
    public Nf4Tests() => _ = ComputeBackend.Current;

    private sealed record GoldenCase(string Name, long[] Shape, float[] Input, byte[] Packed, float[] Absmax,
        byte[] AbsmaxCodes, float[] NestedAbsmax, float Offset, float[] AbsmaxDequantized, float[] Dequantized);

    private static (float[] DynamicMap, List<GoldenCase> Cases) LoadGolden()
    {
        using var doc = JsonDocument.Parse(File.ReadAllText(TestPaths.InRepo("FineTune.Tests", "Adapters", "Golden", "nf4_golden.json")));
        var root = doc.RootElement;
        static byte[] B(JsonElement e, string name) => Convert.FromBase64String(e.GetProperty(name).GetString()!);
        static float[] F(JsonElement e, string name) => [.. System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(B(e, name))];
        var cases = root.GetProperty("cases").EnumerateArray().Select(c => new GoldenCase(
            c.GetProperty("name").GetString()!,
            [.. c.GetProperty("shape").EnumerateArray().Select(s => s.GetInt64())],
            F(c, "input"), B(c, "packed"), F(c, "absmax"), B(c, "absmax_codes"), F(c, "nested_absmax"),
            F(c, "offset")[0], F(c, "absmax_dequantized"), F(c, "dequantized"))).ToList();
        return (F(root, "dynamic_map"), cases);
    }

    [Fact]
    public void Nf4_code_has_the_sixteen_bitsandbytes_values()
    {
        var (_, _) = LoadGolden();
        using var doc = JsonDocument.Parse(File.ReadAllText(TestPaths.InRepo("FineTune.Tests", "Adapters", "Golden", "nf4_golden.json")));
        var golden = System.Runtime.InteropServices.MemoryMarshal.Cast<byte, float>(Convert.FromBase64String(doc.RootElement.GetProperty("nf4_code").GetString()!)).ToArray();
        Assert.Equal(golden, Nf4.Code);
        Assert.Equal(16, Nf4.Code.Length);
    }

    [Fact]
    public void Dynamic_map_equals_the_golden_one_within_an_ulp()
    {
        // The golden (numpy) uses the textbook linspace; libtorch's vectorised linspace, which bitsandbytes
        // calls and we call, may round a point one ulp away. See tools/golden/nf4_golden.py --check-bnb.
        var (dynamicMap, _) = LoadGolden();
        var ours = Nf4.DynamicMap;
        Assert.Equal(256, ours.Length);
        for (int i = 0; i < 256; i++)
            Assert.True(Math.Abs(BitConverter.SingleToInt32Bits(ours[i]) - BitConverter.SingleToInt32Bits(dynamicMap[i])) <= 4, $"entry {i}: {ours[i]} vs {dynamicMap[i]}");
        Assert.Equal(-1f, ours.Min(), 0.01f);
        Assert.Equal(1f, ours.Max());
        Assert.Equal(ours.Order(), ours);
        Assert.Contains(0f, ours);
    }

    // Whole tensor (the golden cases are smaller than a slice), and slices of one and of two 64-blocks: a weight is
    // quantized a slice at a time, and every slicing must give bitsandbytes' bytes.
    [Theory]
    [InlineData(Nf4.QuantizeSliceElements)]
    [InlineData(64)]
    [InlineData(128)]
    public void Quantize_gives_the_golden_bytes_and_absmax_exactly(long sliceElements)
    {
        var (_, cases) = LoadGolden();
        Assert.Contains(cases, c => c.Input.Length > 2 * sliceElements || sliceElements == Nf4.QuantizeSliceElements);
        foreach (var c in cases)
        {
            using var scope = NewDisposeScope();
            var input = tensor(c.Input, c.Shape);
            using var data = Nf4.Quantize(input, doubleQuantization: true, sliceElements);

            Assert.True(c.Packed.SequenceEqual(data.Packed.data<byte>().ToArray()), $"{c.Name}: packed bytes differ");
            Assert.True(data.DoubleQuantized);
            Assert.True(c.AbsmaxCodes.SequenceEqual(data.AbsmaxCodes!.data<byte>().ToArray()), $"{c.Name}: absmax codes differ");
            Assert.Equal(c.Offset, data.Offset!.item<float>(), 1e-6f * Math.Abs(c.Offset) + 1e-12f);
            var nested = data.NestedAbsmax!.data<float>().ToArray();
            Assert.Equal(c.NestedAbsmax.Length, nested.Length);
            for (int i = 0; i < nested.Length; i++)
                Assert.Equal(c.NestedAbsmax[i], nested[i], 1e-6f * Math.Abs(c.NestedAbsmax[i]) + 1e-12f);
            Assert.Equal(c.Shape, data.Shape);
        }
    }

    [Fact]
    public void Dequantize_gives_the_golden_values_within_fp32_rounding()
    {
        var (_, cases) = LoadGolden();
        foreach (var c in cases)
        {
            using var scope = NewDisposeScope();
            using var data = Nf4.Quantize(tensor(c.Input, c.Shape));
            var absmax = Nf4.DequantizeAbsmax(data).data<float>().ToArray();
            for (int i = 0; i < absmax.Length; i++)
                Assert.True(Math.Abs(absmax[i] - c.AbsmaxDequantized[i]) <= 2e-6f * Math.Abs(c.AbsmaxDequantized[i]) + 1e-12f, $"{c.Name}: absmax {i}");
            var w = Nf4.Dequantize(data, ScalarType.Float32);
            Assert.Equal(c.Shape, w.shape);
            var values = w.data<float>().ToArray();
            for (int i = 0; i < values.Length; i++)
                Assert.True(Math.Abs(values[i] - c.Dequantized[i]) <= 2e-6f * Math.Abs(c.Dequantized[i]) + 1e-12f, $"{c.Name}: value {i}: {values[i]} vs {c.Dequantized[i]}");
        }
    }

    [Fact]
    public void Without_double_quantization_the_absmax_stays_fp32_and_dequantizes_exactly()
    {
        // bitsandbytes' compress_statistics=False: the same packed codes, the block absmaxes kept as they are.
        var (_, cases) = LoadGolden();
        foreach (var c in cases)
        {
            using var scope = NewDisposeScope();
            using var data = Nf4.Quantize(tensor(c.Input, c.Shape), doubleQuantization: false);
            Assert.False(data.DoubleQuantized);
            Assert.Null(data.AbsmaxCodes);
            Assert.True(c.Packed.SequenceEqual(data.Packed.data<byte>().ToArray()), $"{c.Name}: packed bytes differ");
            Assert.Equal(c.Absmax, data.Absmax!.data<float>().ToArray());
            var values = Nf4.Dequantize(data, ScalarType.Float32).data<float>().ToArray();
            for (int i = 0; i < values.Length; i++)
            {
                int nibble = i % 2 == 0 ? c.Packed[i / 2] >> 4 : c.Packed[i / 2] & 15;
                Assert.Equal(Nf4.Code[nibble] * c.Absmax[i / Nf4.BlockSize], values[i]);
            }
        }
    }

    [Fact]
    public void A_layer_quantized_without_double_quantization_keeps_one_fp32_absmax_buffer()
    {
        using var scope = NewDisposeScope();
        using var layer = new LoraLinear(128, 64, hasBias: false);
        using (no_grad()) layer.LoadWeight(randn(64, 128) * 0.02);
        using var dense = layer.BaseWeight();
        layer.QuantizeWeight(computeDtype: ScalarType.Float32, doubleQuantization: false);
        var buffers = layer.named_buffers().Select(b => b.name).ToList();
        Assert.Equal(["weight_nf4", "weight_absmax"], buffers);
        var back = layer.BaseWeight();
        var error = (back - dense).abs().max().item<float>();
        Assert.True(error <= (1 - 0.6961928009986877) / 2 * dense.abs().max().item<float>(), $"max error {error}");
    }

    [Fact]
    public void Round_trip_error_is_within_half_the_widest_code_gap()
    {
        using var scope = NewDisposeScope();
        manual_seed(3);
        var w = randn(64, 128) * 0.02;
        using var data = Nf4.Quantize(w);
        var back = Nf4.Dequantize(data, ScalarType.Float32);
        var absmax = w.view(-1, 64).abs().amax([1]).view(-1, 1);                  // (blocks, 1)
        var error = (back - w).view(-1, 64).abs() / absmax;                       // relative to the block's absmax
        // the widest gap between neighbouring NF4 values is -0.6962 - (-1), so half of it bounds the error (plus the double-quantized absmax's error)
        float worst = error.max().item<float>();
        Assert.True(worst <= (1 - 0.6961928009986877) / 2 + 5e-3, $"worst relative error {worst}");
        Assert.Equal(64 * 128 / 2, data.Packed.numel());
        Assert.Equal(ScalarType.Byte, data.Packed.dtype);
    }
}
