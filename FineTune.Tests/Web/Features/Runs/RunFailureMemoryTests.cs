using FineTune.Engine.Backend;
using FineTune.Engine.Models;
using FineTune.Tests.Models;
using FineTune.Web.Features.Runs;
using static TorchSharp.torch;

namespace FineTune.Tests.Web.Features.Runs;

public sealed class RunFailureMemoryTests
{
    [Fact]
    public void The_engines_memory_refusal_gets_its_own_headline_not_out_of_memory()
    {
        _ = ComputeBackend.Current;
        var refusal = Assert.Throws<ModelMemoryException>(() => ModelLoader.Load(ModelFixtures.Folder("qwen2"),
            new ModelLoadOptions { Device = CPU, AvailableMemory = _ => new AvailableMemory(1, "1 byte (test)") }));
        Assert.Equal(RunFailureKind.NotEnoughMemory, RunFailure.Classify(RunFailure.Message(refusal)));
        Assert.Equal(RunFailureKind.OutOfMemory, RunFailure.Classify("CUDA out of memory. Tried to allocate 2.00 GiB"));
    }
}
