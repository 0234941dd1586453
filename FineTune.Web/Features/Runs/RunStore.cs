using System.Text;
using System.Text.Json;
using FineTune.Engine.Data;
using FineTune.Web.Features.Data;
using FineTune.Web.Features.Settings;
using FineTune.Web.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace FineTune.Web.Features.Runs;

/// <summary>
/// The run history: rows in SQLite, files in data/runs/&lt;id&gt;/ (original upload under original/,
/// dataset.jsonl as trained, settings.json, and whatever the trainer writes: checkpoints, adapter).
/// </summary>
public sealed class RunStore(IDbContextFactory<RunDbContext> contexts, DataPaths paths, ILogger<RunStore> logger)
{
    public const string DatasetFile = "dataset.jsonl";
    public const string SettingsFile = "settings.json";
    public const string OriginalFolder = "original";

    public string RunDirectory(int id) => paths.RunDirectory(id);

    /// <summary>Creates a queued run and writes its files.</summary>
    public async Task<Run> CreateAsync(TrainingSettings settings, IReadOnlyList<QaRow> rows, string originalFileName, byte[]? originalFile, CancellationToken cancellationToken = default)
    {
        if (rows.Count == 0)
            throw new ArgumentException("A run needs at least one usable Q&A row; the dataset is empty.", nameof(rows));
        var run = new Run
        {
            Status = RunStatus.Queued,
            Model = settings.Model,
            DatasetFileName = Path.GetFileName(originalFileName),
            DatasetRows = rows.Count,
            DatasetHash = DataImporter.Hash(rows),
            SettingsJson = settings.ToJson(),
            CreatedAt = DateTime.UtcNow,
        };
        await using (var db = await contexts.CreateDbContextAsync(cancellationToken))
        {
            db.Runs.Add(run);
            await db.SaveChangesAsync(cancellationToken);
        }

        string folder = RunDirectory(run.Id);
        Directory.CreateDirectory(folder);
        if (originalFile is not null)
        {
            Directory.CreateDirectory(Path.Combine(folder, OriginalFolder));
            await File.WriteAllBytesAsync(Path.Combine(folder, OriginalFolder, run.DatasetFileName), originalFile, cancellationToken);
        }
        await File.WriteAllTextAsync(Path.Combine(folder, SettingsFile), run.SettingsJson, Encoding.UTF8, cancellationToken);
        await File.WriteAllLinesAsync(Path.Combine(folder, DatasetFile), rows.Select(ToJsonLine), Encoding.UTF8, cancellationToken);
        return run;
    }

    /// <summary>The rows a run trains on, as saved when it was created.</summary>
    public async Task<IReadOnlyList<QaRow>> ReadDatasetAsync(int id, CancellationToken cancellationToken = default)
    {
        var rows = new List<QaRow>();
        foreach (string line in await File.ReadAllLinesAsync(Path.Combine(RunDirectory(id), DatasetFile), cancellationToken))
        {
            if (line.Length == 0) continue;
            var item = JsonSerializer.Deserialize<DatasetLine>(line) ?? throw new JsonException($"Null line in {DatasetFile} of run {id}.");
            rows.Add(new QaRow(item.instruction, item.output, item.input ?? string.Empty, item.system, item.source_row));
        }
        return rows;
    }

    public async Task<Run?> GetAsync(int id, CancellationToken cancellationToken = default)
    {
        await using var db = await contexts.CreateDbContextAsync(cancellationToken);
        return await db.Runs.AsNoTracking().FirstOrDefaultAsync(r => r.Id == id, cancellationToken);
    }

    public async Task<IReadOnlyList<Run>> ListAsync(CancellationToken cancellationToken = default)
    {
        await using var db = await contexts.CreateDbContextAsync(cancellationToken);
        return await db.Runs.AsNoTracking().OrderByDescending(r => r.Id).ToListAsync(cancellationToken);
    }

    public async Task<IReadOnlyList<RunMetric>> MetricsAsync(int id, CancellationToken cancellationToken = default)
    {
        await using var db = await contexts.CreateDbContextAsync(cancellationToken);
        return await db.Metrics.AsNoTracking().Where(m => m.RunId == id).OrderBy(m => m.Step).ThenBy(m => m.Id).ToListAsync(cancellationToken);
    }

    /// <summary>Moves a run to <paramref name="status"/>, stamping start/end times.</summary>
    public async Task<Run> SetStatusAsync(int id, RunStatus status, string? error = null, CancellationToken cancellationToken = default)
    {
        return await UpdateAsync(id, run =>
        {
            run.Status = status;
            if (status == RunStatus.Training) { run.StartedAt ??= DateTime.UtcNow; run.EndedAt = null; run.Error = null; }
            if (status is RunStatus.Completed or RunStatus.Failed or RunStatus.Cancelled or RunStatus.Interrupted) run.EndedAt = DateTime.UtcNow;
            if (status == RunStatus.Queued) run.EndedAt = null;
            if (error is not null) run.Error = error;
        }, cancellationToken);
    }

    public Task<Run> UpdateAsync(int id, Action<Run> change, CancellationToken cancellationToken = default) => UpdateCoreAsync(id, change, cancellationToken);

    private async Task<Run> UpdateCoreAsync(int id, Action<Run> change, CancellationToken cancellationToken)
    {
        await using var db = await contexts.CreateDbContextAsync(cancellationToken);
        var run = await db.Runs.FirstOrDefaultAsync(r => r.Id == id, cancellationToken)
            ?? throw new KeyNotFoundException($"Run {id} does not exist (deleted?).");
        change(run);
        await db.SaveChangesAsync(cancellationToken);
        return run;
    }

    public async Task AddMetricAsync(RunMetric metric, CancellationToken cancellationToken = default)
    {
        await using var db = await contexts.CreateDbContextAsync(cancellationToken);
        db.Metrics.Add(metric);
        var run = await db.Runs.FirstAsync(r => r.Id == metric.RunId, cancellationToken);
        run.LastStep = Math.Max(run.LastStep, metric.Step);
        if (metric.Loss is { } loss) run.FinalTrainLoss = loss;
        if (metric.EvalLoss is { } eval) run.FinalEvalLoss = eval;
        await db.SaveChangesAsync(cancellationToken);
    }

    public Task<Run> SetNotesAsync(int id, string? notes, CancellationToken cancellationToken = default) =>
        UpdateAsync(id, run => run.Notes = string.IsNullOrWhiteSpace(notes) ? null : notes.Trim(), cancellationToken);

    /// <summary>Deletes the run's row, its metrics and its folder. A run in training must be cancelled first.</summary>
    public async Task DeleteAsync(int id, CancellationToken cancellationToken = default)
    {
        await using (var db = await contexts.CreateDbContextAsync(cancellationToken))
        {
            var run = await db.Runs.FirstOrDefaultAsync(r => r.Id == id, cancellationToken);
            if (run is null) return;
            if (run.Status == RunStatus.Training)
                throw new InvalidOperationException($"Run {id} is training; cancel it before deleting it.");
            db.Runs.Remove(run);
            await db.SaveChangesAsync(cancellationToken);
        }
        string folder = RunDirectory(id);
        if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
    }

    /// <summary>On start-up: runs left 'training' by a stopped process become 'interrupted' (resumable from their last checkpoint).</summary>
    public async Task<IReadOnlyList<int>> MarkInterruptedAsync(CancellationToken cancellationToken = default)
    {
        await using var db = await contexts.CreateDbContextAsync(cancellationToken);
        var stale = await db.Runs.Where(r => r.Status == RunStatus.Training).ToListAsync(cancellationToken);
        foreach (var run in stale)
        {
            run.Status = RunStatus.Interrupted;
            run.EndedAt = DateTime.UtcNow;
            logger.LogWarning("Run {Id} was training when the app stopped; marked interrupted (last checkpoint: {Checkpoint})", run.Id, run.LastCheckpoint ?? "none");
        }
        await db.SaveChangesAsync(cancellationToken);
        return stale.Select(r => r.Id).ToArray();
    }

    /// <summary>Runs still waiting, oldest first (re-queued after a restart).</summary>
    public async Task<IReadOnlyList<int>> QueuedAsync(CancellationToken cancellationToken = default)
    {
        await using var db = await contexts.CreateDbContextAsync(cancellationToken);
        return await db.Runs.Where(r => r.Status == RunStatus.Queued).OrderBy(r => r.Id).Select(r => r.Id).ToListAsync(cancellationToken);
    }

    private static string ToJsonLine(QaRow row) => JsonSerializer.Serialize(new DatasetLine(row.Instruction, row.Input, row.Output, row.System, row.SourceRow));

#pragma warning disable IDE1006, SA1300 // alpaca keys are lower-case
    private sealed record DatasetLine(string instruction, string? input, string output, string? system, int source_row);
#pragma warning restore IDE1006, SA1300
}
