using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using static TorchSharp.torch;

namespace FineTune.Tests.Adapters;

public class DropoutTapeTests
{
    public DropoutTapeTests() => _ = ComputeBackend.Current;

    [Fact]
    public void Replay_hands_back_the_recorded_seeds_in_order_and_no_more()
    {
        using var tape = new DropoutTape();
        long[] recorded;
        manual_seed(7);
        using (tape.Record()) recorded = [tape.NewSeed(), tape.NewSeed(), tape.NewSeed()];
        Assert.Equal(3, recorded.Distinct().Count());
        for (int round = 0; round < 2; round++)
        {
            using (tape.Replay())
            {
                Assert.Equal(recorded, new[] { tape.ReplayedSeed(), tape.ReplayedSeed(), tape.ReplayedSeed() });
                Assert.Throws<InvalidOperationException>(() => tape.ReplayedSeed());
            }
        }

        // The first seed comes from torch's CPU generator, which the trainer seeds every step: same seed, same masks.
        using var again = new DropoutTape();
        manual_seed(7);
        using (again.Record()) Assert.Equal(recorded[0], again.NewSeed());
        using var other = new DropoutTape();
        manual_seed(8);
        using (other.Record()) Assert.NotEqual(recorded[0], other.NewSeed());
    }
}
