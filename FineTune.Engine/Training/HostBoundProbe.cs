using System.Diagnostics;
using FineTune.Engine.Backend;
using static TorchSharp.torch;

namespace FineTune.Engine.Training;

/// <summary>
/// Whether a run's GPU waits for the host, measured on its own first steps: NVML's utilization (the share of its last
/// sample period, 1/6 s to 1 s, in which a kernel ran), read once at least a second of training after the first step
/// (which compiles and warms up), over at least three steps. Below <see cref="BusyThreshold"/> percent the step is bound by
/// the host's time per op, and packed micro-batches padded to bucket lengths so that they replay from CUDA graphs
/// (<see cref="LoraTrainer.GraphPlanOf"/>) pay: on an H200, 0.5B QLoRA Q&amp;A ran 2.03x faster padded (30,899 against 15,217
/// tokens/s), while 7B QLoRA Q&amp;A, bound by the GPU, ran no faster (8,378 against 8,421) and kept 3.6 GiB more. Host-bound
/// steps measured 52-73% busy, GPU-bound ones 88-100% (benchmarks.md, raw-2026-11-29-h200x2-diagnosis).
/// </summary>
/// <param name="window">At least this much training after the first step before the reading (default 1 s).</param>
/// <param name="utilization">The reading (default NVML's, <see cref="GpuMemory.UtilizationPercent"/>); tests give their own.</param>
internal sealed class HostBoundProbe(Device device, int firstStep, TimeSpan? window = null, Func<int?>? utilization = null)
{
    /// <summary>Utilization below this (percent) reads as a GPU waiting for the host.</summary>
    public const int BusyThreshold = 85;

    private const int MinimumSteps = 3;
    private readonly TimeSpan _window = window ?? TimeSpan.FromSeconds(1);

    private readonly Stopwatch _clock = new();
    private int _steps;

    /// <summary>For tests and the benchmark's comparisons: the decision instead of the measurement (null: measure).</summary>
    internal static bool? Forced { get; set; }

    /// <summary>The decision, once made: true when the host bounds the step (false where NVML cannot say); null while measuring.</summary>
    public bool? HostBound { get; private set; } = Forced;

    /// <summary>The utilization the decision was made on (percent), for the log.</summary>
    public int? BusyPercent { get; private set; }

    /// <summary>Called after each optimizer step (its values read, so its kernels have run); true when this call decided.</summary>
    public bool AfterStep(int step)
    {
        if (HostBound is not null || step < firstStep + 1) return false;
        if (step == firstStep + 1) _clock.Start(); // after the first step: JIT, cuBLAS heuristics, the first capture
        if (++_steps < MinimumSteps || _clock.Elapsed < _window) return false;
        BusyPercent = utilization is null ? GpuMemory.UtilizationPercent(device) : utilization();
        HostBound = BusyPercent < BusyThreshold; // NVML cannot say (null): not host-bound, nothing padded
        return true;
    }
}
