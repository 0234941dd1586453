using FineTune.Engine.Backend;
using FineTune.Engine.Models;
using FineTune.Tests.Support;
using static TorchSharp.torch;

namespace FineTune.Tests.Models;

/// <summary>Several sequences in one row (restarted position ids + block-diagonal causal mask) give each its own logits.</summary>
[Trait(Category.Name, Category.Parity)]
public class PackingTests
{
    [Theory]
    [InlineData("qwen2")]
    [InlineData("qwen3")]
    [InlineData("qwen-v1")]
    public void Packed_sequences_match_their_separate_golden_logits(string fixture)
    {
        _ = ComputeBackend.Current;
        var golden = ModelFixtures.LoadGolden(fixture);
        string folder = ModelFixtures.Folder(fixture);
        using var model = ModelLoader.Load(folder, new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        var expected = SafeTensors.LoadAll(Path.Combine(folder, "golden.safetensors"));
        try
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            var parts = golden.Logits.Take(3).ToList();
            long[] ids = parts.SelectMany(p => p.InputIds).Select(i => (long)i).ToArray();
            long[] positions = parts.SelectMany(p => Enumerable.Range(0, p.InputIds.Length)).Select(i => (long)i).ToArray();
            var positionIds = tensor(positions, [1, positions.Length]);
            var mask = AttentionMaskBuilder.PackedCausalMask(positionIds);                  // (1, 1, T, T)
            var logits = model.Logits(tensor(ids, [1, ids.Length]), positionIds, mask)[0]; // (T, V)
            long start = 0;
            foreach (var part in parts)
            {
                var piece = logits.narrow(0, start, part.InputIds.Length);
                double diff = (piece - expected[part.Tensor]).abs().max().item<float>();
                Assert.True(diff <= 1e-4, $"{fixture} packed '{part.Text}': max |logit diff| {diff:G3}");
                start += part.InputIds.Length;
            }
        }
        finally
        {
            foreach (var t in expected.Values) t.Dispose();
        }
    }

    [Fact]
    public void Packed_mask_is_causal_within_each_sequence_only()
    {
        _ = ComputeBackend.Current;
        using var scope = NewDisposeScope();
        var mask = AttentionMaskBuilder.PackedCausalMask(tensor(new long[] { 0, 1, 0, 1, 2 }, [1, 5]));
        Assert.Equal(new long[] { 1, 1, 5, 5 }, mask.shape);
        int[] allowed = mask.to(ScalarType.Int32).reshape(25).data<int>().ToArray();
        Assert.Equal(new[]
        {
            1, 0, 0, 0, 0,
            1, 1, 0, 0, 0,
            0, 0, 1, 0, 0,
            0, 0, 1, 1, 0,
            0, 0, 1, 1, 1,
        }, allowed);
    }
}
