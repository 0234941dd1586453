using FineTune.Engine.Backend;

namespace FineTune.Tests.Backend;

public class AttentionKernelsTests
{
    /// <summary>The switch is a C++ symbol of libtorch_cpu (TorchSharp has no binding for it): it must resolve in the libtorch we ship.</summary>
    [Fact]
    public void Cudnn_attention_switch_is_found_and_turns_it_off()
    {
        _ = ComputeBackend.Current;
        Assert.True(AttentionKernels.TryDisableCudnnAttention());
    }
}
