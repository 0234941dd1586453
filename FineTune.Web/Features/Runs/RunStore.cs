using System.Text;
using System.Text.Json;
using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using FineTune.Engine.Training;
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
    public const string CheckpointsFolder = "checkpoints";

    public string RunDirectory(int id) => paths.RunDirectory(id);

    /// <summary>
    /// Creates a queued run and its files, all or nothing: the files are written (and flushed) to a temporary folder
    /// first, the row is inserted in a transaction, the folder is renamed to the run's id, and only then is the
    /// transaction committed. A full disk or a failing database at any point leaves neither a row nor a folder (before,
    /// a full disk left a queued run with a truncated dataset.jsonl that started by itself on the next boot and failed).
    /// </summary>
    public Task<Run> CreateAsync(TrainingSettings settings, IReadOnlyList<QaRow> rows, string originalFileName, byte[]? originalFile, CancellationToken cancellationToken = default) =>
        rows.Count == 0
            ? throw new ArgumentException("A run needs at least one usable Q&A row; the dataset is empty.", nameof(rows))
            : CreateAsync(settings, rows.Count, DataImporter.Hash(rows), rows.Select(ToJsonLine), originalFileName, originalFile, cancellationToken);

    /// <summary>A run of a chat dataset: its conversations are dataset.jsonl's lines, as {"messages": [...], "source_row": n}.</summary>
    public Task<Run> CreateChatAsync(TrainingSettings settings, IReadOnlyList<Conversation> conversations, string originalFileName, byte[]? originalFile, CancellationToken cancellationToken = default) =>
        conversations.Count == 0
            ? throw new ArgumentException("A run needs at least one usable conversation; the dataset is empty.", nameof(conversations))
            : CreateAsync(settings, conversations.Count, DataImporter.Hash(conversations), conversations.Select(ToJsonLine), originalFileName, originalFile, cancellationToken);

    private async Task<Run> CreateAsync(TrainingSettings settings, int count, string hash, IEnumerable<string> datasetLines, string originalFileName, byte[]? originalFile, CancellationToken cancellationToken)
    {
        var run = new Run
        {
            Status = RunStatus.Queued,
            Model = settings.Model,
            DatasetFileName = Path.GetFileName(originalFileName),
            DatasetRows = count,
            DatasetHash = hash,
            SettingsJson = settings.ToJson(),
            CreatedAt = DateTime.UtcNow,
        };

        string staging = Path.Combine(paths.Runs, ".new-" + Guid.NewGuid().ToString("N"));
        string? folder = null;
        try
        {
            Directory.CreateDirectory(staging);
            if (originalFile is not null)
            {
                Directory.CreateDirectory(Path.Combine(staging, OriginalFolder));
                await File.WriteAllBytesAsync(Path.Combine(staging, OriginalFolder, run.DatasetFileName), originalFile, cancellationToken);
                DurableFiles.SyncFolder(Path.Combine(staging, OriginalFolder));
            }
            await File.WriteAllTextAsync(Path.Combine(staging, SettingsFile), run.SettingsJson, Encoding.UTF8, cancellationToken);
            await File.WriteAllLinesAsync(Path.Combine(staging, DatasetFile), datasetLines, Encoding.UTF8, cancellationToken);
            DurableFiles.SyncFolder(staging);

            await using var db = await contexts.CreateDbContextAsync(cancellationToken);
            await using var transaction = await db.Database.BeginTransactionAsync(cancellationToken);
            db.Runs.Add(run);
            await db.SaveChangesAsync(cancellationToken);
            folder = RunDirectory(run.Id);
            if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true); // left by a run deleted while its folder was busy
            Directory.Move(staging, folder);
            DurableFiles.SyncDirectoryEntry(paths.Runs);
            await transaction.CommitAsync(cancellationToken);
            return run;
        }
        catch
        {
            TryDeleteFolder(staging);
            if (folder is not null) TryDeleteFolder(folder);
            throw;
        }
    }

    private void TryDeleteFolder(string folder)
    {
        try
        {
            if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            logger.LogWarning("Could not remove '{Folder}' after a failed start: {Problem}", folder, e.Message);
        }
    }

    /// <summary>Where a run's checkpoints go (checkpoint-&lt;step&gt;/ folders).</summary>
    public string CheckpointsDirectory(int id) => Path.Combine(RunDirectory(id), CheckpointsFolder);

    /// <summary>The newest complete checkpoint on disk, which a resume continues from (null: it has to start again).</summary>
    public ResumePoint? ResumePoint(int id) =>
        Checkpoints.LatestComplete(CheckpointsDirectory(id)) is { } latest ? new ResumePoint(latest.Folder, latest.Step) : null;

    /// <summary>
    /// Before a run (re)starts: its record goes back to the checkpoint it resumes from, or to step 0. Metrics logged
    /// after that step are deleted (the run logs those steps again; kept, they were stored twice and the curve went
    /// back in time), and the last step and checkpoint are the checkpoint's.
    /// </summary>
    public async Task RewindToAsync(int id, ResumePoint? point, CancellationToken cancellationToken = default)
    {
        int step = point?.Step ?? 0;
        await using var db = await contexts.CreateDbContextAsync(cancellationToken);
        await using var transaction = await db.Database.BeginTransactionAsync(cancellationToken);
        await db.Metrics.Where(m => m.RunId == id && m.Step > step).ExecuteDeleteAsync(cancellationToken);
        var run = await db.Runs.FirstOrDefaultAsync(r => r.Id == id, cancellationToken)
            ?? throw new KeyNotFoundException($"Run {id} does not exist (deleted?).");
        run.LastStep = step;
        run.LastCheckpoint = point?.Folder;
        await db.SaveChangesAsync(cancellationToken);
        await transaction.CommitAsync(cancellationToken);
        // Starting again from scratch: checkpoints of the earlier attempt must not be offered for a later resume.
        if (point is null && Directory.Exists(CheckpointsDirectory(id))) Directory.Delete(CheckpointsDirectory(id), recursive: true);
    }

    /// <summary>The rows a run trains on, as saved when it was created.</summary>
    public async Task<IReadOnlyList<QaRow>> ReadDatasetAsync(int id, CancellationToken cancellationToken = default)
    {
        var rows = new List<QaRow>();
        foreach (string line in await File.ReadAllLinesAsync(Path.Combine(RunDirectory(id), DatasetFile), cancellationToken))
        {
            if (line.Length == 0 || IsConversationLine(line)) continue;
            var item = JsonSerializer.Deserialize<DatasetLine>(line) ?? throw new JsonException($"Null line in {DatasetFile} of run {id}.");
            rows.Add(new QaRow(item.instruction, item.output, item.input ?? string.Empty, item.system, item.source_row));
        }
        return rows;
    }

    /// <summary>The conversations a chat run trains on, as saved when it was created (none for a Q&amp;A run).</summary>
    public async Task<IReadOnlyList<Conversation>> ReadConversationsAsync(int id, CancellationToken cancellationToken = default)
    {
        var conversations = new List<Conversation>();
        foreach (string line in await File.ReadAllLinesAsync(Path.Combine(RunDirectory(id), DatasetFile), cancellationToken))
        {
            if (line.Length == 0 || !IsConversationLine(line)) continue;
            var item = JsonSerializer.Deserialize<ConversationLine>(line) ?? throw new JsonException($"Null line in {DatasetFile} of run {id}.");
            conversations.Add(new Conversation(item.messages.Select(m => new ChatMessage(m.role, m.content)).ToList(), item.source_row));
        }
        return conversations;
    }

    private static bool IsConversationLine(string line) => line.StartsWith("{\"messages\":", StringComparison.Ordinal);

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

    /// <summary>On start-up: removes what a start interrupted by a crash left (runs/.new-* folders, never in the database).</summary>
    public void RemoveUnfinishedStarts()
    {
        if (!Directory.Exists(paths.Runs)) return;
        foreach (string staging in Directory.GetDirectories(paths.Runs, ".new-*")) TryDeleteFolder(staging);
    }

    /// <summary>Runs still waiting, oldest first (re-queued after a restart).</summary>
    public async Task<IReadOnlyList<int>> QueuedAsync(CancellationToken cancellationToken = default)
    {
        await using var db = await contexts.CreateDbContextAsync(cancellationToken);
        return await db.Runs.Where(r => r.Status == RunStatus.Queued).OrderBy(r => r.Id).Select(r => r.Id).ToListAsync(cancellationToken);
    }

    private static string ToJsonLine(QaRow row) => JsonSerializer.Serialize(new DatasetLine(row.Instruction, row.Input, row.Output, row.System, row.SourceRow));

    private static string ToJsonLine(Conversation conversation) => JsonSerializer.Serialize(new ConversationLine(
        conversation.Messages.Select(m => new MessageLine(m.Role, m.Content)).ToList(), conversation.SourceRow));

#pragma warning disable IDE1006, SA1300 // alpaca and OpenAI keys are lower-case
    private sealed record DatasetLine(string instruction, string? input, string output, string? system, int source_row);
    private sealed record ConversationLine(IReadOnlyList<MessageLine> messages, int source_row);
    private sealed record MessageLine(string role, string content);
#pragma warning restore IDE1006, SA1300
}

/// <summary>A checkpoint a run can continue from, and the step it was taken at.</summary>
public sealed record ResumePoint(string Folder, int Step);
