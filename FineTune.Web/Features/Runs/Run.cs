using FineTune.Engine.Training;

namespace FineTune.Web.Features.Runs;

public enum RunStatus { Queued, Training, Completed, Failed, Cancelled, Interrupted }

/// <summary>One training run: what was trained on what, how it went. Files live in data/runs/&lt;Id&gt;/.</summary>
public sealed class Run
{
    public int Id { get; set; }
    public RunStatus Status { get; set; }
    public string Model { get; set; } = string.Empty;
    public string DatasetFileName { get; set; } = string.Empty;
    public int DatasetRows { get; set; }
    /// <summary>SHA-256 of the rows trained on (see DataImporter.Hash).</summary>
    public string DatasetHash { get; set; } = string.Empty;
    /// <summary>TrainingSettings as JSON.</summary>
    public string SettingsJson { get; set; } = "{}";
    public DateTime CreatedAt { get; set; }
    public DateTime? StartedAt { get; set; }
    public DateTime? EndedAt { get; set; }
    public int TotalSteps { get; set; }
    public int LastStep { get; set; }
    public double? FinalTrainLoss { get; set; }
    public double? FinalEvalLoss { get; set; }
    /// <summary>Folder of the newest checkpoint, for resuming an interrupted run.</summary>
    public string? LastCheckpoint { get; set; }
    public string? Error { get; set; }
    public string? Notes { get; set; }
    public List<RunMetric> Metrics { get; set; } = [];

    public TimeSpan? Duration => StartedAt is { } start ? (EndedAt ?? DateTime.UtcNow) - start : null;
    public bool IsActive => Status is RunStatus.Queued or RunStatus.Training;
}

/// <summary>One logged point of a run's curve: the engine's <see cref="TrainingProgress"/> as a row.</summary>
public sealed class RunMetric
{
    public long Id { get; set; }
    public int RunId { get; set; }
    public int Step { get; set; }
    public double Epoch { get; set; }
    public double? Loss { get; set; }
    public double? EvalLoss { get; set; }
    public double? LearningRate { get; set; }
    public double? GradNorm { get; set; }
    public double? TokensPerSecond { get; set; }
    public long? GpuMemoryBytes { get; set; }
    public DateTime At { get; set; }

    /// <summary>The one mapping from a progress report to its row.</summary>
    public static RunMetric From(int runId, TrainingProgress p, DateTime at) => new()
    {
        RunId = runId, Step = p.Step, Epoch = p.Epoch, Loss = p.Loss, EvalLoss = p.EvalLoss, LearningRate = p.LearningRate,
        GradNorm = p.GradNorm, TokensPerSecond = p.TokensPerSecond, GpuMemoryBytes = p.GpuMemoryBytes, At = at,
    };
}
