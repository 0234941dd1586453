using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Engine.Backend;
using FineTune.Engine.Distributed;
using FineTune.Engine.Training;
using static TorchSharp.torch;

namespace FineTune.Bench;

/// <summary>
/// `dp-abort --model FIXTURE [--devices 2] [--out result.json]`: the failure path of a data-parallel run on the first N
/// devices (NCCL on GPUs, host memory on CPUs). Each <see cref="Scenarios"/> entry trains the dp-check job with rank 1
/// failing on cue (it throws instead of taking part in a collective, leaving its peers waiting in it, as a replica that
/// hits an error or runs out of memory does) or with the run cancelled; it passes when the run ends within
/// <see cref="Patience"/> with the failure (or the cancellation) and every replica's communicator was aborted. Then a
/// plain run in the same process shows that aborted communicators leave NCCL usable. Exit code 1 when a scenario
/// fails, 2 when one hangs (the process cannot go on then).
/// </summary>
public static class DataParallelAbortCommand
{
    public static readonly TimeSpan Patience = TimeSpan.FromMinutes(2);

    /// <summary>A way for a run to end early: rank 1 fails at its Nth collective (1: the adapter broadcast), or the run is cancelled after a step.</summary>
    public sealed record Scenario(string Name, int FailAtCollective, int CancelAfterStep);

    public static readonly IReadOnlyList<Scenario> Scenarios =
    [
        new("rank 1 fails before the first collective; rank 0 waits in the adapter broadcast", FailAtCollective: 1, CancelAfterStep: 0),
        new("rank 1 fails at the third step's all-reduce; rank 0 waits in it", FailAtCollective: 4, CancelAfterStep: 0),
        new("the run is cancelled after step 2", FailAtCollective: 0, CancelAfterStep: 2),
    ];

    public static int Run(string[] args, BackendInfo backend)
    {
        var o = new Options(args);
        int count = o.Int("devices", 2);
        var devices = backend.IsCuda ? backend.GpuDevices.Take(count).ToList() : [.. Enumerable.Repeat(CPU, count)];
        if (devices.Count < count) throw new ArgumentException($"--devices {count}: this machine has {devices.Count} GPU(s).");
        var dtype = backend.IsCuda ? ScalarType.BFloat16 : ScalarType.Float32;
        string model = o.Required("model");
        string folder = Path.Combine(Path.GetTempPath(), "dp-abort-" + Guid.NewGuid().ToString("N"));
        var results = new JsonArray();
        var summary = new JsonObject { ["gpu"] = backend.Description, ["devices"] = devices.Count, ["scenarios"] = results };
        void Write()
        {
            Console.WriteLine(summary.ToJsonString());
            if (o.Optional("out") is string path) File.WriteAllText(path, summary.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        }
        try
        {
            bool passed = true;
            foreach (var scenario in Scenarios)
            {
                var outcome = Try(model, devices, dtype, scenario, Path.Combine(folder, results.Count.ToString(System.Globalization.CultureInfo.InvariantCulture)));
                results.Add(outcome.ToJson());
                passed &= outcome.Passed;
                if (!outcome.Finished)
                {
                    Write();
                    return 2;
                }
            }
            // The same process again, nothing injected: a fresh group after aborted ones trains to the end.
            var clock = Stopwatch.StartNew();
            var plain = new FineTunePipeline().Run(DataParallelCheckCommand.Job(model, 64, dtype, Path.Combine(folder, "plain")) with { Devices = devices });
            summary["plain_run_after_aborts"] = new JsonObject
            {
                ["completed"] = plain.Training.Completed,
                ["steps"] = plain.Training.History.Count,
                ["seconds"] = clock.Elapsed.TotalSeconds,
            };
            passed &= plain.Training.Completed;
            summary["passed"] = passed;
            Write();
            return passed ? 0 : 1;
        }
        finally
        {
            if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>Trains the dp-check job on <paramref name="devices"/> the way <paramref name="scenario"/> says and reports how the run ended.</summary>
    public static AbortOutcome Try(string modelFolder, IReadOnlyList<Device> devices, ScalarType dtype, Scenario scenario, string folder)
    {
        List<FailingCommunicator> communicators = [];
        var pipeline = new FineTunePipeline
        {
            CreateGroup = group =>
            {
                communicators = [.. DataParallelGroup.Communicators(group).Select((c, rank) => new FailingCommunicator(c, rank == 1 ? scenario.FailAtCollective : 0))];
                return DataParallelGroup.Create(group, communicators);
            },
        };
        using var cancel = new CancellationTokenSource();
        var progress = new SynchronousProgress(p =>
        {
            if (scenario.CancelAfterStep > 0 && p.Step >= scenario.CancelAfterStep) cancel.Cancel();
        });
        var job = DataParallelCheckCommand.Job(modelFolder, 64, dtype, Path.Combine(folder, "checkpoints")) with { Devices = devices };
        var clock = Stopwatch.StartNew();
        var run = Task.Factory.StartNew(() => pipeline.Run(job, progress, cancel.Token), CancellationToken.None, TaskCreationOptions.LongRunning, TaskScheduler.Default);
        bool finished = Task.WhenAny(run, Task.Delay(Patience)).GetAwaiter().GetResult() == run;
        var error = finished ? run.Exception?.InnerException : null;
        bool expected = scenario.CancelAfterStep > 0 ? error is OperationCanceledException : error is InjectedReplicaFailure;
        return new AbortOutcome(scenario.Name, finished, clock.Elapsed.TotalSeconds, error?.GetType().Name, error?.Message,
            [.. communicators.Select(c => c.Aborts)], finished && expected && communicators.Count == devices.Count && communicators.All(c => c.Aborts > 0));
    }

    private sealed class SynchronousProgress(Action<TrainingProgress> report) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => report(value);
    }
}

/// <summary>How a run of <see cref="DataParallelAbortCommand.Try"/> ended: within the patience or not, with what, and how often each rank's communicator was aborted.</summary>
public sealed record AbortOutcome(string Scenario, bool Finished, double Seconds, string? ExceptionType, string? Message, IReadOnlyList<int> AbortsPerRank, bool Passed)
{
    public JsonObject ToJson() => new()
    {
        ["scenario"] = Scenario,
        ["finished"] = Finished,
        ["seconds"] = Seconds,
        ["exception"] = ExceptionType,
        ["message"] = Message,
        ["aborts_per_rank"] = new JsonArray([.. AbortsPerRank.Select(a => (JsonNode)a)]),
        ["passed"] = Passed,
    };
}

/// <summary>The failure <see cref="FailingCommunicator"/> throws on cue.</summary>
public sealed class InjectedReplicaFailure(string message) : Exception(message);

/// <summary>
/// A replica's communicator that, at its <c>failAtCollective</c>-th collective (0: never), throws instead of taking part,
/// as a replica that failed would: its peers are left waiting in that collective. Counts the aborts it receives.
/// </summary>
public sealed class FailingCommunicator(IReplicaCommunicator inner, int failAtCollective) : IReplicaCommunicator
{
    private int _collectives;
    private int _aborts;

    public int Aborts => Volatile.Read(ref _aborts);

    public int Rank => inner.Rank;

    public int WorldSize => inner.WorldSize;

    public void AllReduceSum(params Tensor[] tensors)
    {
        FailOnCue();
        inner.AllReduceSum(tensors);
    }

    public void Broadcast(Tensor tensor, int root = 0)
    {
        FailOnCue();
        inner.Broadcast(tensor, root);
    }

    public void Abort()
    {
        Interlocked.Increment(ref _aborts);
        inner.Abort();
    }

    public void Dispose() => inner.Dispose();

    private void FailOnCue()
    {
        if (++_collectives == failAtCollective) throw new InjectedReplicaFailure($"rank {Rank}: injected failure at collective {failAtCollective}");
    }
}
