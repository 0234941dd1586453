using FineTune.Engine.Models;

namespace FineTune.Web.Features.Settings;

/// <summary>What the advisor checks. Each has a localized text "Warn_{Code}" and a remedy "Fix_{Code}".</summary>
public enum WarningCode
{
    FewRows,
    NoEvalRows,
    LoggingAfterEnd,
    NoCheckpointBeforeEnd,
    DoesNotFit,
    BFloat16Unsupported,
    HighLearningRate,
    LongRunOnCpu,
    RowsTooLong,
    UnknownModelSize,
}

/// <summary>
/// A warning with the numbers its text needs and, where one exists, a one-click fix. <see cref="Count"/> is the number its
/// text's noun follows ("1 step", "2 steps"; see CountedText), when the text has one.
/// </summary>
public sealed record SettingsWarning(WarningCode Code, object[] Arguments, Action<TrainingSettings>? Fix = null)
{
    public int? Count { get; init; }
}

/// <summary>The facts the advice depends on; <paramref name="DeviceMemoryBytes"/>: on CUDA the smallest GPU the run may get, else the host's memory.</summary>
public sealed record TrainingContext(int Rows, int RowsTooLong, int TotalTokens, bool Cuda, bool SupportsBFloat16, long? DeviceMemoryBytes, int CpuThreads);

public static class SettingsAdvisor
{
    public const int RecommendedRows = 50;

    public static IReadOnlyList<SettingsWarning> Check(TrainingSettings s, ModelFacts? shape, TrainingContext context)
    {
        var warnings = new List<SettingsWarning>();
        var plan = TrainingEstimator.Plan(context.Rows, s);

        if (context.Rows < RecommendedRows)
            warnings.Add(new(WarningCode.FewRows, [context.Rows, RecommendedRows]) { Count = context.Rows });
        if (s.EvalFraction > 0 && plan.EvalRows == 0)
            warnings.Add(new(WarningCode.NoEvalRows, [context.Rows, TrainingEstimator.MinimumRowsForEval], x => x.EvalFraction = 0));
        if (plan.TotalSteps > 0 && s.LoggingSteps > plan.TotalSteps)
        {
            int every = Math.Max(1, plan.TotalSteps / 10);
            warnings.Add(new(WarningCode.LoggingAfterEnd, [s.LoggingSteps, plan.TotalSteps, every], x => x.LoggingSteps = every) { Count = plan.TotalSteps });
        }
        if (plan.TotalSteps > 0 && s.SaveSteps > plan.TotalSteps)
        {
            int every = Math.Max(1, plan.TotalSteps / 2);
            warnings.Add(new(WarningCode.NoCheckpointBeforeEnd, [s.SaveSteps, plan.TotalSteps, every], x => x.SaveSteps = every) { Count = plan.TotalSteps });
        }
        if (shape is null)
            warnings.Add(new(WarningCode.UnknownModelSize, []));
        else if (context.DeviceMemoryBytes is { } available)
        {
            var need = TrainingEstimator.Memory(shape, s, context.Cuda ? available : null); // checkpointing as the run will decide it
            if (need.Total > available)
            {
                Action<TrainingSettings>? fix = !s.FourBit
                    ? x => x.Quantization = Quantization.Nf4
                    : s.MaxSeqLength > 256 ? x => x.MaxSeqLength = 256 : null;
                warnings.Add(new(WarningCode.DoesNotFit, [Gigabytes(need.Total), Gigabytes(available)], fix));
            }
        }
        if (context.Cuda && !context.SupportsBFloat16 && s.Precision == Precision.BFloat16)
            warnings.Add(new(WarningCode.BFloat16Unsupported, [], x => x.Precision = Precision.Float16));
        if (s.LearningRate > 1e-3)
            warnings.Add(new(WarningCode.HighLearningRate, [s.LearningRate], x => x.LearningRate = 2e-4));
        if (!context.Cuda && shape is not null)
        {
            var time = TrainingEstimator.Time(shape, context.TotalTokens, s, cuda: false, context.CpuThreads);
            if (time > TimeSpan.FromHours(2))
                warnings.Add(new(WarningCode.LongRunOnCpu, [Math.Round(time.TotalHours, 1)]));
        }
        if (context.RowsTooLong > 0)
            warnings.Add(new(WarningCode.RowsTooLong, [context.RowsTooLong, s.MaxSeqLength], x => x.MaxSeqLength = Math.Min(s.MaxSeqLength * 2, 2048)) { Count = context.RowsTooLong });
        return warnings;
    }

    public static string Gigabytes(long bytes) => (bytes / 1e9).ToString("0.0", System.Globalization.CultureInfo.InvariantCulture);
}
