using System.Collections.Concurrent;
using FineTune.Web.Features.Runs;
using FineTune.Engine.Training;

namespace FineTune.Tests.Web.Support;

/// <summary>
/// Test double for the engine (tests only): each run reports the steps the test releases one by one,
/// so a test can watch the queue, the store and the hub at every point.
/// </summary>
public sealed class ScriptedTrainingRunner : ITrainingRunner
{
    private readonly ConcurrentDictionary<int, RunScript> _scripts = new();

    public ConcurrentQueue<TrainingJob> Jobs { get; } = new();

    public RunScript Script(int runId) => _scripts.GetOrAdd(runId, _ => new RunScript());

    public async Task<TrainingOutcome> RunAsync(TrainingJob job, IProgress<TrainingProgress> progress, CancellationToken cancellationToken)
    {
        Jobs.Enqueue(job);
        var script = Script(job.RunId);
        script.Started.TrySetResult();
        while (true)
        {
            var step = await script.Steps.Reader.ReadAsync(cancellationToken);
            if (step.Fail is not null) throw step.Fail;
            if (step.Progress is null)
                return new TrainingOutcome(step.FinalLoss, null, Path.Combine(job.OutputDirectory, "adapter"));
            progress.Report(step.Progress);
        }
    }

    public sealed class RunScript
    {
        public TaskCompletionSource Started { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);
        internal System.Threading.Channels.Channel<(TrainingProgress? Progress, double? FinalLoss, Exception? Fail)> Steps { get; } =
            System.Threading.Channels.Channel.CreateUnbounded<(TrainingProgress?, double?, Exception?)>();

        public void Report(TrainingProgress p) => Steps.Writer.TryWrite((p, null, null));
        public void Finish(double finalLoss) => Steps.Writer.TryWrite((null, finalLoss, null));
        public void Fail(Exception e) => Steps.Writer.TryWrite((null, null, e));
    }
}
