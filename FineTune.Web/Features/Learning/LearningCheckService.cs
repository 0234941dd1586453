using System.Collections.Concurrent;
using System.Text;
using FineTune.Web.Features.Chat;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using Microsoft.EntityFrameworkCore;

namespace FineTune.Web.Features.Learning;

/// <summary>What the page shows for a run's check: stored, under way (with the answers so far), or not started.</summary>
/// <param name="Asked">Questions answered by both models so far, while running.</param>
/// <param name="Waiting">Under way, but waiting for a training on the device to end first.</param>
public sealed record LearningCheckState(LearningCheck? Stored, LearningCheckReport? Report, bool Running, bool Waiting, int Asked, int Total);

/// <summary>
/// "Did it learn?": once a run completes, asks its training questions (<see cref="LearningCheckSample.Rows"/>) to the
/// base model and to the fine-tuned one through the chat test's generator (<see cref="IChatGenerator"/>), greedily so
/// the answers are the same every time, and stores the answers with the run (LearningChecks table). Started by itself
/// when a run completes, or by the page for a completed run that has none; one check per run, re-run on demand. Like
/// the chat test, it waits while a run trains: between questions it gives the device to the queue.
/// </summary>
public sealed class LearningCheckService(
    IDbContextFactory<RunDbContext> contexts, RunStore store, IChatGenerator generator, ArtifactPackager packager,
    RunNotifier notifier, RunQueue queue, ILogger<LearningCheckService> logger) : BackgroundService
{
    private static readonly TimeSpan TrainingPoll = TimeSpan.FromMilliseconds(500);

    private readonly ConcurrentDictionary<int, Progress> _running = new();
    private CancellationToken _stopping = CancellationToken.None;

    /// <summary>Raised with the run's id when its check moves (a question answered, started, stored).</summary>
    public event Action<int>? Changed;

    private sealed class Progress
    {
        public volatile int Total;
        public List<LearningCheckAnswer> Answers { get; } = [];
        public volatile bool Waiting;
        public Task Task = Task.CompletedTask;
    }

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        _stopping = stoppingToken;
        using var subscription = notifier.Subscribe(e =>
        {
            if (e is RunStatusEvent { Status: RunStatus.Completed } completed) _ = StartIfMissingAsync(completed.RunId);
            return Task.CompletedTask;
        });
        try { await Task.Delay(Timeout.Infinite, stoppingToken); }
        catch (OperationCanceledException) { }
        await Task.WhenAll(_running.Values.Select(p => p.Task));
    }

    /// <summary>The run's check as it stands, with its report when stored.</summary>
    public async Task<LearningCheckState> GetAsync(int runId, CancellationToken cancellationToken = default)
    {
        if (_running.TryGetValue(runId, out var progress))
        {
            LearningCheckAnswer[] answers;
            lock (progress.Answers) answers = [.. progress.Answers];
            var partial = answers.Length == 0 ? null : LearningCheckReport.From(answers, await QuestionsAsync(runId, cancellationToken));
            return new LearningCheckState(null, partial, Running: true, progress.Waiting, answers.Length, progress.Total);
        }
        var stored = await LoadAsync(runId, cancellationToken);
        if (stored is null) return new LearningCheckState(null, null, false, false, 0, 0);
        var report = stored.Status == LearningCheckStatus.Completed ? LearningCheckReport.From(stored.Answers, await QuestionsAsync(runId, cancellationToken)) : null;
        return new LearningCheckState(stored, report, false, false, stored.Answers.Count, stored.Answers.Count);
    }

    /// <summary>Starts the check of a completed run that has none stored and none under way (once per run).</summary>
    public async Task StartIfMissingAsync(int runId)
    {
        try
        {
            if (_running.ContainsKey(runId) || !await CanCheckAsync(runId)) return;
            await using var db = await contexts.CreateDbContextAsync(_stopping);
            if (await db.LearningChecks.AnyAsync(c => c.RunId == runId, _stopping)) return;
            Start(runId);
        }
        catch (Exception e) when (e is OperationCanceledException or IOException or DbUpdateException or Microsoft.Data.Sqlite.SqliteException)
        {
            logger.LogWarning("The learning check of run {RunId} did not start: {Problem}", runId, e.Message);
        }
    }

    /// <summary>Asks the questions again (the stored answers are replaced when the new ones are in).</summary>
    public async Task RerunAsync(int runId)
    {
        if (!_running.ContainsKey(runId) && await CanCheckAsync(runId)) Start(runId);
    }

    /// <summary>The check under way for a run, to await (completed when none is).</summary>
    public Task WhenDone(int runId) => _running.TryGetValue(runId, out var progress) ? progress.Task : Task.CompletedTask;

    private async Task<bool> CanCheckAsync(int runId) =>
        await store.GetAsync(runId, _stopping) is { Status: RunStatus.Completed } && packager.HasAdapter(runId);

    private void Start(int runId)
    {
        var progress = new Progress();
        if (!_running.TryAdd(runId, progress)) return;
        progress.Task = Task.Run(async () =>
        {
            try { await RunAsync(runId, progress, _stopping); }
            finally
            {
                _running.TryRemove(runId, out _);
                Changed?.Invoke(runId);
            }
        });
        Changed?.Invoke(runId);
    }

    private async Task<IReadOnlyList<BatchTestRow>> QuestionsAsync(int runId, CancellationToken cancellationToken) =>
        LearningCheckSample.Questions(await store.ReadDatasetAsync(runId, cancellationToken), await store.ReadConversationsAsync(runId, cancellationToken));

    /// <summary>Runs the check now and stores it: the answers, or the reason it failed. Cancelled (app stopping): nothing stored.</summary>
    public Task<LearningCheck> RunAsync(int runId, CancellationToken cancellationToken) => RunAsync(runId, new Progress(), cancellationToken);

    private async Task<LearningCheck> RunAsync(int runId, Progress progress, CancellationToken cancellationToken)
    {
        var check = new LearningCheck { RunId = runId, StartedAt = DateTime.UtcNow };
        try
        {
            var run = await store.GetAsync(runId, cancellationToken) ?? throw new KeyNotFoundException($"Run {runId} does not exist (deleted?).");
            var settings = TrainingSettings.FromJson(run.SettingsJson);
            var questions = await QuestionsAsync(runId, cancellationToken);
            var sample = LearningCheckSample.Rows(questions.Count);
            progress.Total = sample.Count;
            string adapter = packager.AdapterDirectory(runId);
            foreach (int index in sample)
            {
                var question = questions[index];
                ChatRequest Request(string? adapterDirectory) => ChatRequest.ForRun(
                    settings, adapterDirectory, question.Messages, LearningCheckSample.MaxNewTokens(question.Expected), temperature: 0, topP: 1);
                await WaitForTrainingAsync(runId, progress, cancellationToken);
                // Fine-tuned first: the generator loads the model with the adapter once and answers as the base model by switching it off.
                var answer = new LearningCheckAnswer { RunId = runId, RowIndex = index };
                answer.FineTunedAnswer = await AnswerAsync(Request(adapter), cancellationToken);
                answer.BaseAnswer = await AnswerAsync(Request(null), cancellationToken);
                check.Answers.Add(answer);
                lock (progress.Answers) progress.Answers.Add(answer);
                Changed?.Invoke(runId);
            }
            check.Status = LearningCheckStatus.Completed;
        }
        catch (Exception e) when (e is NotSupportedException or InvalidOperationException or IOException
                                      or ArgumentException or KeyNotFoundException or FineTune.Engine.Tokenization.PromptTemplateException
                                      or FineTune.Engine.Tokenization.Jinja.ChatTemplateException or System.Text.Json.JsonException)
        {
            logger.LogWarning("The learning check of run {RunId} failed: {Problem}", runId, e.Message);
            check.Status = LearningCheckStatus.Failed;
            check.Error = e.Message;
            check.Answers.Clear();
        }
        check.EndedAt = DateTime.UtcNow;
        await SaveAsync(check);
        return check;
    }

    private async Task WaitForTrainingAsync(int runId, Progress progress, CancellationToken cancellationToken)
    {
        while (queue.CurrentRunId is not null)
        {
            if (!progress.Waiting) { progress.Waiting = true; Changed?.Invoke(runId); }
            await Task.Delay(TrainingPoll, cancellationToken);
        }
        if (progress.Waiting) { progress.Waiting = false; Changed?.Invoke(runId); }
    }

    private async Task<string> AnswerAsync(ChatRequest request, CancellationToken cancellationToken)
    {
        var text = new StringBuilder();
        await foreach (var piece in generator.StreamAsync(request, cancellationToken)) text.Append(piece.Text);
        return text.ToString();
    }

    /// <summary>Replaces the run's stored check (one per run); a run deleted meanwhile keeps nothing.</summary>
    private async Task SaveAsync(LearningCheck check)
    {
        await using var db = await contexts.CreateDbContextAsync(CancellationToken.None);
        await using var transaction = await db.Database.BeginTransactionAsync(CancellationToken.None);
        if (!await db.Runs.AnyAsync(r => r.Id == check.RunId)) return;
        await db.LearningChecks.Where(c => c.RunId == check.RunId).ExecuteDeleteAsync(CancellationToken.None);
        db.LearningChecks.Add(check);
        await db.SaveChangesAsync(CancellationToken.None);
        await transaction.CommitAsync(CancellationToken.None);
    }

    private async Task<LearningCheck?> LoadAsync(int runId, CancellationToken cancellationToken)
    {
        await using var db = await contexts.CreateDbContextAsync(cancellationToken);
        return await db.LearningChecks.AsNoTracking().Include(c => c.Answers).FirstOrDefaultAsync(c => c.RunId == runId, cancellationToken);
    }
}
