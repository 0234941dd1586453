using FineTune.Engine.Backend;
using FineTune.Engine.Models;
using FineTune.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Tests.Models;

/// <summary>Logits equal to HF transformers' (fp32, CPU) on the fixture models; tolerance 1e-4.</summary>
[Trait(Category.Name, Category.Parity)]
public class ModelParityTests
{
    private const double Tolerance = 1e-4;

    public static TheoryData<string> Fixtures => new(ModelFixtures.Names);

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void Logits_match_transformers(string fixture)
    {
        _ = ComputeBackend.Current;
        var golden = ModelFixtures.LoadGolden(fixture);
        string folder = ModelFixtures.Folder(fixture);
        using var model = ModelLoader.Load(folder, new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        var expected = SafeTensors.LoadAll(Path.Combine(folder, "golden.safetensors"));
        try
        {
            Assert.NotEmpty(golden.Logits);
            foreach (var entry in golden.Logits)
            {
                using var scope = NewDisposeScope();
                using var _ = no_grad();
                var ids = tensor(entry.InputIds.Select(i => (long)i).ToArray(), [1, entry.InputIds.Length]);
                var logits = model.Logits(ids)[0];                                  // (T, V)
                var want = expected[entry.Tensor];
                Assert.Equal(want.shape, logits.shape);
                double diff = (logits - want).abs().max().item<float>();
                Assert.True(diff <= Tolerance, $"{fixture} '{entry.Text}': max |logit diff| {diff:G3} > {Tolerance}");
            }
        }
        finally
        {
            foreach (var t in expected.Values) t.Dispose();
        }
    }

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void Padded_batch_with_position_ids_matches_transformers_on_real_tokens(string fixture)
    {
        _ = ComputeBackend.Current;
        var batch = ModelFixtures.LoadGolden(fixture).PaddedBatch;
        string folder = ModelFixtures.Folder(fixture);
        using var model = ModelLoader.Load(folder, new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        var expected = SafeTensors.LoadAll(Path.Combine(folder, "golden.safetensors"));
        try
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            int b = batch.InputIds.Length, t = batch.InputIds[0].Length;
            var ids = tensor(batch.InputIds.SelectMany(r => r).Select(i => (long)i).ToArray(), [b, t]);
            var mask = tensor(batch.AttentionMask.SelectMany(r => r).Select(i => (long)i).ToArray(), [b, t]);
            var positions = tensor(batch.PositionIds.SelectMany(r => r).Select(i => (long)i).ToArray(), [b, t]);
            var logits = model.Logits(ids, positions, mask);                        // (B, T, V)
            var want = expected[batch.Tensor];
            Assert.Equal(want.shape, logits.shape);
            var real = mask.to(ScalarType.Bool).unsqueeze(-1);                      // (B, T, 1)
            double diff = ((logits - want).abs() * real).max().item<float>();
            Assert.True(diff <= Tolerance, $"{fixture} padded batch: max |logit diff| on real tokens {diff:G3} > {Tolerance}");
            Assert.True(batch.AttentionMask.Any(r => r.Contains(0)), "the fixture's batch should contain padding");
        }
        finally
        {
            foreach (var t in expected.Values) t.Dispose();
        }
    }
}
