using FineTune.Engine.Data;
using FineTune.Engine.Models;
using FineTune.Engine.Training;

namespace FineTune.Web.Features.Settings;

/// <summary>How the rows split and how many optimizer steps training takes.</summary>
public sealed record StepPlan(int TrainRows, int EvalRows, int BatchesPerEpoch, int StepsPerEpoch, int TotalSteps, int WarmupSteps);

/// <summary>
/// Numbers shown before training starts: steps (Hugging Face Trainer's formula, so the count matches what
/// the tutorial's notebook prints), memory and a rough time. Memory and time are estimates and say so in the UI.
/// </summary>
public static class TrainingEstimator
{
    /// <summary>Fewer rows than this train without an evaluation split (FineTune.Engine Batching.Split).</summary>
    public const int MinimumRowsForEval = Batching.MinimumRowsForValidation;

    /// <summary>
    /// The engine's own numbers (HF Trainer's formula, TrainingOptions): batches = ceil(train_rows / batch);
    /// updates per epoch = max(ceil(batches / accumulation), 1); max_steps = ceil(epochs × updates per epoch);
    /// warmup = ceil(max_steps × warmup_ratio). Eval rows as Batching.Split takes them. No rows: no steps.
    /// </summary>
    public static StepPlan Plan(int rows, TrainingSettings s)
    {
        int evalRows = Batching.ValidationCount(rows, s.EvalFraction, MinimumRowsForEval);
        int trainRows = rows - evalRows;
        var options = s.ToTrainingOptions();
        int total = trainRows == 0 ? 0 : options.TotalSteps(trainRows);
        return new StepPlan(trainRows, evalRows, options.BatchesPerEpoch(trainRows), options.StepsPerEpoch(trainRows), total, options.WarmupStepCount(total));
    }

    /// <summary>Evaluations per run by default: enough points for a curve, few enough that evaluating stays a small share of the run.</summary>
    public const int EvaluationsPerRun = 10;

    /// <summary>
    /// Steps between evaluations: about <see cref="EvaluationsPerRun"/> per run (and always one at the end). Evaluating at every
    /// logging step over the whole validation split made a 20,000-row run ~10x longer than its training steps.
    /// </summary>
    public static int EvalInterval(int totalSteps) => Math.Max(1, (int)Math.Ceiling(totalSteps / (double)EvaluationsPerRun));

    /// <summary>
    /// Training memory of these settings as they are (4-bit base or not, <see cref="TrainingSettings.FourBit"/>), with
    /// gradient checkpointing as the run will decide it against <paramref name="gpuBytes"/>: the memory of the GPU the run
    /// will train on (null: unknown, as on the CPU).
    /// </summary>
    public static MemoryEstimate Memory(ModelFacts facts, TrainingSettings s, long? gpuBytes = null) => Memory(facts, s, s.FourBit, gpuBytes);

    /// <summary>
    /// Training memory for batch × max length tokens, with or without a 4-bit NF4 base (the model step compares both): the
    /// engine's one estimate (<see cref="TrainingMemory"/>, from the model's exact facts, auto gradient checkpointing
    /// resolved by <see cref="TrainingMemory.ResolveCheckpointing"/>); the web only shows it.
    /// </summary>
    public static MemoryEstimate Memory(ModelFacts facts, TrainingSettings s, bool fourBit, long? gpuBytes = null) =>
        TrainingMemory.Estimate(facts, Query(s, fourBit, s.GradientCheckpointing), gpuBytes);

    /// <summary>
    /// The least memory a run of these settings can need: auto gradient checkpointing counted on. What the queue asks of a
    /// GPU (<see cref="Runs.GpuPool.RequestFor"/>), so that a GPU that holds the run only with checkpointing is still one
    /// it may get; the run then decides against the GPU it got.
    /// </summary>
    public static MemoryEstimate LeastMemory(ModelFacts facts, TrainingSettings s) =>
        TrainingMemory.Estimate(facts, Query(s, s.FourBit, s.GradientCheckpointing ?? true));

    private static MemoryQuery Query(TrainingSettings s, bool fourBit, bool? checkpointing) =>
        new(s.ToLoraSettings(), s.BatchSize, s.MaxSeqLength, fourBit, s.DoubleQuantization, checkpointing,
            ComputeBytes: s.Precision == Precision.Float32 ? 4 : 2);

    /// <summary>The settings summary's line on gradient checkpointing: its resource key ("Summary_Checkpointing_…") and numbers (GB).</summary>
    public static (string Key, object[] Arguments) CheckpointingLine(CheckpointingChoice choice) => choice.Reason switch
    {
        CheckpointingReason.FitsWithout or CheckpointingReason.TooBigWithout =>
            ("Summary_Checkpointing_" + choice.Reason, [SettingsAdvisor.Gigabytes(choice.BytesWithout ?? 0), SettingsAdvisor.Gigabytes(choice.DeviceBytes ?? 0)]),
        CheckpointingReason.SomeLayers =>
            ("Summary_Checkpointing_SomeLayers", [choice.Layers ?? 0, choice.OfLayers ?? 0, SettingsAdvisor.Gigabytes(choice.BytesWithout ?? 0), SettingsAdvisor.Gigabytes(choice.DeviceBytes ?? 0)]),
        _ => ($"Summary_Checkpointing_{choice.Reason}_{(choice.On ? "On" : "Off")}", []),
    };

    private static readonly TimeSpan MaxEstimate = TimeSpan.FromDays(3650);

    /// <summary>
    /// Rough wall time: 6 × parameters FLOPs per token (forward + backward), at an assumed sustained speed per GPU, on
    /// <paramref name="gpus"/> GPUs as if each added one GPU's speed (two H200s trained 1.8-1.9x one: docs/benchmarks.md).
    /// </summary>
    public static TimeSpan Time(ModelFacts shape, int totalTokens, TrainingSettings s, bool cuda, int cpuThreads, int gpus = 1)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(gpus, 1);
        double flops = 6.0 * shape.TotalParameters * totalTokens * s.Epochs;
        double perSecond = cuda ? 40e12 * gpus : Math.Max(cpuThreads, 1) * 8e9;
        if (s.FourBit) perSecond /= 1.5; // dequantizing each weight on the fly
        // Capped at ten years: a huge config.json must not overflow TimeSpan (that ended the settings page's circuit).
        return TimeSpan.FromSeconds(Math.Clamp(flops / perSecond, 1, MaxEstimate.TotalSeconds));
    }

    /// <summary>
    /// Token count of one row until the real tokenizer is wired in: Chinese/Japanese/Korean characters count
    /// about one token each in Qwen/Llama-3 vocabularies, other text about four characters a token, plus the prompt template.
    /// </summary>
    public static int EstimateTokens(QaRow row)
    {
        int cjk = 0, other = 0;
        foreach (char c in row.System + row.Instruction + row.Input + row.Output)
        {
            if (c >= 0x2E80 && c <= 0x9FFF || c >= 0xAC00 && c <= 0xD7AF || c >= 0xF900 && c <= 0xFAFF || c >= 0xFF00 && c <= 0xFFEF) cjk++;
            else other++;
        }
        return cjk + (other + 3) / 4 + 16;
    }
}
