using System.Diagnostics;
using static TorchSharp.torch;

namespace FineTune.Engine.Training;

/// <summary>
/// Diagnostics (benchmark only, never on by default): where an optimizer step's time goes on one replica. At the end of
/// each phase the device is synchronized, so a phase's time is the device's, not only the host's issuing; this makes the
/// step slower than an unsynchronized one and is used to compare replicas and phases, not to measure throughput.
/// Also counts the .NET garbage collections and their pause time over the run, which stop every replica thread at once.
/// </summary>
public sealed class StepPhaseClock(Device device)
{
    public static readonly IReadOnlyList<string> Phases = ["forward", "backward", "all_reduce", "optimizer"];

    public const int Forward = 0, Backward = 1, AllReduce = 2, Optimizer = 3;

    private readonly double[] _totalMs = new double[Phases.Count];
    private readonly Stopwatch _clock = new();
    private readonly int[] _collectionsAtStart = [GC.CollectionCount(0), GC.CollectionCount(1), GC.CollectionCount(2)];
    private readonly TimeSpan _pauseAtStart = GC.GetTotalPauseDuration();
    private int _steps;

    /// <summary>Starts a step's first phase once the device has finished what came before.</summary>
    public void StartStep()
    {
        Synchronize();
        _clock.Restart();
        _steps++;
    }

    /// <summary>Ends <paramref name="phase"/> (adds to it when it recurs in a step, as forward and backward do per micro-batch) and starts the next.</summary>
    public void End(int phase)
    {
        Synchronize();
        _totalMs[phase] += _clock.Elapsed.TotalMilliseconds;
        _clock.Restart();
    }

    /// <summary>Mean milliseconds per step of each phase, the step count, and the collections (all threads') since the clock was made.</summary>
    public StepPhaseTimes Summary(int rank) => new(rank, _steps,
        Phases.Select((name, i) => (name, _steps == 0 ? 0 : _totalMs[i] / _steps)).ToDictionary(p => p.name, p => p.Item2),
        GC.CollectionCount(0) - _collectionsAtStart[0], GC.CollectionCount(1) - _collectionsAtStart[1], GC.CollectionCount(2) - _collectionsAtStart[2],
        (GC.GetTotalPauseDuration() - _pauseAtStart).TotalMilliseconds);

    private void Synchronize()
    {
        if (device.type == TorchSharp.DeviceType.CUDA) cuda.synchronize(device);
    }
}

/// <summary>One replica's phase times (ms per optimizer step, device-synchronized) and the process's GC activity during its training.</summary>
public sealed record StepPhaseTimes(int Rank, int Steps, IReadOnlyDictionary<string, double> MillisecondsPerStep,
    int Gen0Collections, int Gen1Collections, int Gen2Collections, double GcPauseMs);
