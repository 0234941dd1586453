namespace FineTune.Web.Features.Coaching;

/// <summary>What the loss curve says, in the terms the tutorial uses to coach (each has "Curve_{kind}" and "CurveRemedy_{kind}").</summary>
public enum CurveKind
{
    /// <summary>Too few points to say anything.</summary>
    TooEarly,
    /// <summary>The training loss is still falling at the end: more epochs may help.</summary>
    StillLearning,
    /// <summary>It fell, then levelled off: learned what it can at these settings.</summary>
    LevelledOff,
    /// <summary>It hardly moved: more epochs or more data (or a higher learning rate).</summary>
    Flat,
    /// <summary>It jumps or rises: the learning rate is too high.</summary>
    Unstable,
    /// <summary>The eval loss rises while the training loss falls: it memorizes.</summary>
    Overfitting,
}

/// <summary>
/// A plain reading of a run's curves (the logged training loss and the eval loss), with the tutorial's remedy when one
/// applies. Thresholds are relative to the loss's own scale, so they hold for any vocabulary size.
/// </summary>
public static class CurveReading
{
    /// <summary>Less than this relative fall between the first and the last third is "flat".</summary>
    public const double FlatFall = 0.03;

    public static CurveKind Read(IReadOnlyList<double> train, IReadOnlyList<double> eval)
    {
        if (train.Any(x => !double.IsFinite(x))) return CurveKind.Unstable;
        if (train.Count < 3) return CurveKind.TooEarly;

        int third = Math.Max(1, train.Count / 3);
        double start = train.Take(third).Average(), end = train.TakeLast(third).Average();
        double scale = Math.Max(Math.Abs(start), 1e-9);

        if (eval.Count >= 3)
        {
            double best = eval.Min();
            if (eval[^1] > best * 1.05 && eval[^1] > eval[^2] && end < start) return CurveKind.Overfitting;
        }
        // Rising overall, or swings larger than the whole fall: the steps are too big.
        double maxJump = train.Zip(train.Skip(1), (a, b) => b - a).Max();
        if (end > start * 1.02 || (maxJump > 0.5 * scale && maxJump > Math.Abs(start - end))) return CurveKind.Unstable;
        if ((start - end) / scale < FlatFall) return CurveKind.Flat;

        // Still falling in the last third (its own first half against its second)?
        var tail = train.TakeLast(Math.Max(2, third)).ToArray();
        int half = tail.Length / 2;
        double tailFall = (tail.Take(half).Average() - tail.Skip(half).Average()) / scale;
        return tailFall > FlatFall / 2 ? CurveKind.StillLearning : CurveKind.LevelledOff;
    }
}
