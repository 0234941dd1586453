namespace FineTune.Engine.Training;

/// <summary>
/// The multipliers of HF's LambdaLR schedules (optimization.py). The learning rate of optimizer step k
/// (0-based) is base × Factor(k): the scheduler steps after each optimizer step.
/// </summary>
public sealed class LearningRateSchedule(LearningRateScheduleKind kind, int warmupSteps, int totalSteps)
{
    public LearningRateScheduleKind Kind { get; } = kind;
    public int WarmupSteps { get; } = warmupSteps;
    public int TotalSteps { get; } = totalSteps;

    public double Factor(int step)
    {
        if (step < WarmupSteps) return (double)step / Math.Max(1, WarmupSteps);
        return Kind switch
        {
            LearningRateScheduleKind.Linear => Math.Max(0.0, (double)(TotalSteps - step) / Math.Max(1, TotalSteps - WarmupSteps)),
            LearningRateScheduleKind.Cosine => Cosine(step),
            _ => 1.0,
        };
    }

    private double Cosine(int step)
    {
        const double cycles = 0.5;
        double progress = (double)(step - WarmupSteps) / Math.Max(1, TotalSteps - WarmupSteps);
        return Math.Max(0.0, 0.5 * (1.0 + Math.Cos(Math.PI * cycles * 2.0 * progress)));
    }
}
