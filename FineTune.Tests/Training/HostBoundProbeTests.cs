using FineTune.Engine.Training;
using static TorchSharp.torch;

namespace FineTune.Tests.Training;

/// <summary>The measured decision whether packed rows are padded for CUDA graphs (<see cref="HostBoundProbe"/>).</summary>
public class HostBoundProbeTests
{
    [Theory]
    [InlineData(60, true)]   // a GPU busy 60% of the time waits for the host
    [InlineData(84, true)]
    [InlineData(85, false)]
    [InlineData(99, false)]  // bound by the GPU: padding would only add work
    public void The_first_steps_decide_once_after_the_warm_up_step_three_steps_and_the_window(int busy, bool hostBound)
    {
        int reads = 0;
        var probe = new HostBoundProbe(CPU, firstStep: 10, window: TimeSpan.Zero, utilization: () => { reads++; return busy; });
        Assert.False(probe.AfterStep(10));          // the first step (JIT, warm-up) is not measured
        Assert.False(probe.AfterStep(11));
        Assert.False(probe.AfterStep(12));
        Assert.Null(probe.HostBound);
        Assert.True(probe.AfterStep(13));           // the third measured step
        Assert.Equal(hostBound, probe.HostBound);
        Assert.Equal(busy, probe.BusyPercent);
        Assert.False(probe.AfterStep(14));          // decided once
        Assert.Equal(1, reads);
    }

    [Fact]
    public void It_waits_for_the_window_and_where_nvml_cannot_say_nothing_is_padded()
    {
        var probe = new HostBoundProbe(CPU, firstStep: 0, window: TimeSpan.FromHours(1), utilization: () => 10);
        for (int step = 0; step < 20; step++) Assert.False(probe.AfterStep(step));
        Assert.Null(probe.HostBound);

        var blind = new HostBoundProbe(CPU, firstStep: 0, window: TimeSpan.Zero, utilization: () => null);
        for (int step = 0; step < 3; step++) blind.AfterStep(step);
        Assert.True(blind.AfterStep(3));
        Assert.False(blind.HostBound);
    }

    [Fact]
    public void A_forced_decision_holds_from_the_start()
    {
        HostBoundProbe.Forced = true;
        try
        {
            var probe = new HostBoundProbe(CPU, firstStep: 0, window: TimeSpan.Zero, utilization: () => 99);
            Assert.True(probe.HostBound);
            Assert.False(probe.AfterStep(5));
            Assert.True(probe.HostBound);
        }
        finally
        {
            HostBoundProbe.Forced = null;
        }
    }
}
