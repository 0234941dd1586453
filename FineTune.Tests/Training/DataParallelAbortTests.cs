using FineTune.Bench;
using FineTune.Engine.Distributed;
using FineTune.Tests.Adapters;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace FineTune.Tests.Training;

/// <summary>
/// When one replica of a data-parallel run fails or the run is cancelled, every replica stops, every communicator is
/// aborted and the run ends with the failure (the run queue marks it Failed) or the cancellation (Cancelled) instead of
/// a replica waiting forever in a collective. On the CPU the replicas are threads joined through host memory, with
/// rank 1 failing on cue (<see cref="FailingCommunicator"/>); `FineTune.Bench dp-abort` runs the same scenarios over
/// NCCL on GPUs.
/// </summary>
public sealed class DataParallelAbortTests(ITestOutputHelper output) : IDisposable
{
    private static readonly string Model = TestFiles.Fixture("models/qwen2");
    private readonly string _folder = TestPaths.NewTempFolder("data-parallel-abort");

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    public static TheoryData<int> ScenarioIndices() => [.. Enumerable.Range(0, DataParallelAbortCommand.Scenarios.Count)];

    [Theory]
    [MemberData(nameof(ScenarioIndices))]
    [Trait(Category.Name, Category.Slow)]
    public void Every_replica_stops_and_every_communicator_is_aborted(int index)
    {
        var scenario = DataParallelAbortCommand.Scenarios[index];

        var outcome = DataParallelAbortCommand.Try(Model, [CPU, CPU], ScalarType.Float32, scenario, _folder);

        output.WriteLine(outcome.ToJson().ToJsonString());
        Assert.True(outcome.Finished, $"{scenario.Name}: still running after {DataParallelAbortCommand.Patience}");
        if (scenario.CancelAfterStep > 0)
        {
            Assert.Equal(nameof(OperationCanceledException), outcome.ExceptionType);
        }
        else
        {
            Assert.Equal(nameof(InjectedReplicaFailure), outcome.ExceptionType);
            Assert.Equal($"rank 1: injected failure at collective {scenario.FailAtCollective}", outcome.Message);
        }
        Assert.Equal(2, outcome.AbortsPerRank.Count);
        Assert.All(outcome.AbortsPerRank, aborts => Assert.True(aborts > 0, "a communicator was not aborted"));
        Assert.True(outcome.Passed);
    }

    [Fact]
    public void A_failure_aborts_every_communicator_once_and_a_second_failure_changes_nothing()
    {
        var communicators = HostCommunicator.CreateGroup(2).Select(c => new FailingCommunicator(c, 0)).ToList();
        using var group = DataParallelGroup.Create([CPU, CPU], communicators);
        var first = new InvalidOperationException("first");

        group.Fail(first);
        group.Fail(new InvalidOperationException("second"));

        Assert.Same(first, group.FirstFailure);
        Assert.Equal([1, 1], communicators.Select(c => c.Aborts));
    }

    [Fact]
    public async Task A_replica_waiting_in_a_collective_is_released_by_the_abort()
    {
        var communicators = HostCommunicator.CreateGroup(2);
        using var group = DataParallelGroup.Create([CPU, CPU], communicators);
        using var values = ones(4);
        var waiting = Task.Run(() => communicators[0].AllReduceSum(values)); // rank 1 never comes

        Assert.True(await Task.WhenAny(waiting, Task.Delay(200)) != waiting, "the all-reduce returned without its peer");
        group.Fail(new InvalidOperationException("rank 1 failed"));

        Assert.True(await Task.WhenAny(waiting, Task.Delay(TimeSpan.FromSeconds(30))) == waiting, "the waiting replica was not released");
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => waiting);
    }
}
