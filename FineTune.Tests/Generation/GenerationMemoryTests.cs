using FineTune.Engine.Backend;
using FineTune.Tests.Support;
using FineTune.Engine.Generation;
using FineTune.Engine.Models;
using FineTune.Tests.Models;
using TorchSharp;
using static TorchSharp.torch;
using Generator = FineTune.Engine.Generation.Generator;

namespace FineTune.Tests.Generation;

/// <summary>Runs alone: resident memory is a whole-process number, so tests running beside it would move it.</summary>
[CollectionDefinition(nameof(GenerationMemoryTests), DisableParallelization = true)]
public sealed class GenerationMemoryCollection;

[Collection(nameof(GenerationMemoryTests))]
public class GenerationMemoryTests
{
    private const long AllowedGrowthBytes = 16L << 20;

    [Fact]
    public void Two_hundred_generations_leave_no_tensors_behind_and_native_memory_flat()
    {
        _ = ComputeBackend.Current;
        using var model = ModelLoader.Load(ModelFixtures.Folder("qwen3"), new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        var generator = new Generator(model);
        var settings = new GenerationSettings { DoSample = true, Temperature = 0.9, TopK = 40, TopP = 0.9, RepetitionPenalty = 1.1, MaxNewTokens = 4, Seed = 1 };
        int[] prompt = [497, 834, 515, 414, 532, 293, 505, 707];

        void Run(int times)
        {
            for (int i = 0; i < times; i++)
                Assert.NotEmpty(generator.Generate(prompt, settings with { Seed = i }).ToArray());
        }

        // Warm-up to a steady state: allocator pools, and the JIT's second tier (methods are recompiled after 30 calls, which
        // inside the measured window added a few MB of code that is not a leak: 17.8 and 18.1 MB against 17 in loaded runs).
        Run(60);
        long rssBefore = SettledMemory.ResidentBytes();
        long liveBefore = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        Run(200);
        long liveAfter = DisposeScopeManager.Statistics.ThreadTotalLiveCount;
        long rssAfter = SettledMemory.ResidentBytes();

        Assert.Equal(liveBefore, liveAfter);
        Assert.True(rssAfter - rssBefore < AllowedGrowthBytes,
            $"resident memory grew by {(rssAfter - rssBefore) / 1e6:0.0} MB over 200 generations (allowed {AllowedGrowthBytes / 1e6:0} MB)");
    }

}
