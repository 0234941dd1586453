using FineTune.Engine.Backend;
using FineTune.Engine.Generation;
using FineTune.Engine.Models;
using FineTune.Tests.Models;
using FineTune.Tests.Support;
using static TorchSharp.torch;
using Generator = FineTune.Engine.Generation.Generator;

namespace FineTune.Tests.Generation;

/// <summary>Greedy continuations with the KV cache equal HF's (full forward each step, no eos stop), 32 tokens.</summary>
[Trait(Category.Name, Category.Parity)]
public class GreedyParityTests
{
    public static TheoryData<string> Fixtures => new(ModelFixtures.Names);

    [Theory]
    [MemberData(nameof(Fixtures))]
    public void Greedy_tokens_match_transformers(string fixture)
    {
        _ = ComputeBackend.Current;
        var golden = ModelFixtures.LoadGolden(fixture);
        using var model = ModelLoader.Load(ModelFixtures.Folder(fixture), new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        var generator = new Generator(model);
        Assert.NotEmpty(golden.Greedy);
        foreach (var entry in golden.Greedy)
        {
            var tokens = generator.Generate(entry.InputIds, GenerationSettings.Greedy(entry.NewTokens.Length)).ToArray();
            Assert.Equal(entry.NewTokens, tokens);
        }
    }
}
