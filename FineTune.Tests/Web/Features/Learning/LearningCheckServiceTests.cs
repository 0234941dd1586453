using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Chat;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.Learning;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Logging.Abstractions;

namespace FineTune.Tests.Web.Features.Learning;

/// <summary>
/// The "did it learn?" service with a generator double: which questions it asks and how (greedy, the run's template,
/// fine-tuned then base), once per run, stored with the run, re-run on demand, behind training.
/// </summary>
public sealed class LearningCheckServiceTests : IAsyncLifetime
{
    private readonly RunTestServices _services = new();
    private readonly ScriptedTrainingRunner _runner = new();
    private readonly RunQueue _queue;
    private readonly ArtifactPackager _packager;
    private readonly KnowingChatGenerator _generator;
    private readonly LearningCheckService _checks;

    private static readonly QaRow[] Rows =
    [
        .. FineTune.Web.Features.Data.QaTemplate.TutorialRows.Select((r, i) => new QaRow(r.Question, r.Answer, SourceRow: i + 2)),
    ];

    public LearningCheckServiceTests()
    {
        _queue = new RunQueue(_services.Store, _services.Notifier, _runner, NullLogger<RunQueue>.Instance);
        _packager = new ArtifactPackager(_services.Store);
        _generator = new KnowingChatGenerator(Rows.ToDictionary(r => r.Instruction, r => r.Output));
        _checks = NewService(_generator);
    }

    private LearningCheckService NewService(IChatGenerator generator) =>
        new(_services.Contexts, _services.Store, generator, _packager, _services.Notifier, _queue, NullLogger<LearningCheckService>.Instance);

    public async Task InitializeAsync()
    {
        await _queue.StartAsync(CancellationToken.None);
        await _checks.StartAsync(CancellationToken.None);
    }

    public async Task DisposeAsync()
    {
        await _checks.StopAsync(CancellationToken.None);
        await _queue.StopAsync(CancellationToken.None);
        _checks.Dispose();
        _queue.Dispose();
        _services.Dispose();
    }

    private static TrainingSettings Settings() => new()
    {
        Model = "Qwen/Qwen2.5-0.5B-Instruct",
        Quantization = Quantization.Nf4,
        PromptTemplate = PromptStyle.Custom,
        CustomTemplate = "問：{instruction}\n答：{output}",
    };

    private async Task<int> CompletedRunAsync(IReadOnlyList<QaRow>? rows = null)
    {
        var run = await _services.Store.CreateAsync(Settings(), rows ?? Rows, "faq.xlsx", null);
        WriteAdapter(run.Id);
        await _services.Store.SetStatusAsync(run.Id, RunStatus.Completed);
        return run.Id;
    }

    private void WriteAdapter(int runId)
    {
        Directory.CreateDirectory(_packager.AdapterDirectory(runId));
        File.WriteAllText(Path.Combine(_packager.AdapterDirectory(runId), "adapter_config.json"), "{\"peft_type\": \"LORA\", \"r\": 16}");
    }

    [Fact]
    public async Task Asks_every_training_question_greedily_with_the_runs_template_fine_tuned_first()
    {
        int id = await CompletedRunAsync();

        var check = await _checks.RunAsync(id, CancellationToken.None);

        Assert.Equal(LearningCheckStatus.Completed, check.Status);
        Assert.Equal(Enumerable.Range(0, Rows.Length), check.Answers.Select(a => a.RowIndex));
        var requests = _generator.Requests;
        Assert.Equal(2 * Rows.Length, requests.Count);
        Assert.All(requests, r => Assert.Equal(0, r.Temperature)); // greedy: the same answers every time
        Assert.All(requests, r => Assert.Equal(new PromptTemplateSettings(PromptStyle.Custom, "問：{instruction}\n答：{output}"), r.PromptTemplate));
        Assert.All(requests, r => Assert.True(r.FourBit));
        Assert.All(requests, r => Assert.Equal("Qwen/Qwen2.5-0.5B-Instruct", r.Model));
        for (int i = 0; i < Rows.Length; i++)
        {
            Assert.Equal(_packager.AdapterDirectory(id), requests[2 * i].AdapterDirectory);
            Assert.Null(requests[2 * i + 1].AdapterDirectory);
            Assert.Equal(Rows[i].Instruction, requests[2 * i].Messages[^1].Content);
            Assert.Equal(LearningCheckSample.MaxNewTokens(Rows[i].Output), requests[2 * i].MaxNewTokens);
        }

        var state = await _checks.GetAsync(id);
        var report = Assert.IsType<LearningCheckReport>(state.Report);
        Assert.Equal(Rows.Select(r => r.Instruction), report.Rows.Select(r => r.Question));
        Assert.Equal(Rows.Select(r => r.Output), report.Rows.Select(r => r.FineTunedAnswer));
        Assert.All(report.Rows, r => Assert.Equal(KnowingChatGenerator.BaseAnswer, r.BaseAnswer));
        Assert.Equal(Rows.Length, report.ChangedCount);
        Assert.Equal(1.0, report.FineTunedScore);
        Assert.InRange(report.BaseScore, 0.0, 0.2);
        Assert.Equal(LearningVerdict.Learned, report.Verdict);
        Assert.False(report.Sampled);
    }

    [Fact]
    public async Task A_big_set_asks_twenty_rows_spread_evenly()
    {
        var rows = Enumerable.Range(1, 45).Select(i => new QaRow($"問題{i}", $"回答{i}", SourceRow: i + 1)).ToArray();
        int id = await CompletedRunAsync(rows);

        var check = await _checks.RunAsync(id, CancellationToken.None);

        Assert.Equal(LearningCheckSample.Rows(45), check.Answers.Select(a => a.RowIndex));
        Assert.Equal(LearningCheckSample.Rows(45).Select(i => $"問題{i + 1}"), _generator.Requests.Where(r => r.AdapterDirectory is null).Select(r => r.Messages[^1].Content));
        var report = (await _checks.GetAsync(id)).Report!;
        Assert.True(report.Sampled);
        Assert.Equal((20, 45), (report.Rows.Count, report.DatasetRows));
    }

    [Fact]
    public async Task A_chat_run_is_asked_each_conversations_last_question_after_its_earlier_turns()
    {
        Conversation[] conversations =
        [
            new([ChatMessage.System("你是客服。"), ChatMessage.User("保固多久？"), ChatMessage.Assistant("一年。"), ChatMessage.User("可以退貨嗎？"), ChatMessage.Assistant(Rows[2].Output)], 2),
            new([ChatMessage.User(Rows[0].Instruction), ChatMessage.Assistant(Rows[0].Output)], 3),
        ];
        var settings = Settings();
        settings.PromptTemplate = PromptStyle.ModelChatTemplate;
        var run = await _services.Store.CreateChatAsync(settings, conversations, "chat.jsonl", null);
        WriteAdapter(run.Id);
        await _services.Store.SetStatusAsync(run.Id, RunStatus.Completed);

        var check = await _checks.RunAsync(run.Id, CancellationToken.None);

        Assert.Equal([0, 1], check.Answers.Select(a => a.RowIndex));
        Assert.Equal([.. conversations[0].Messages.Take(4)], _generator.Requests[0].Messages);
        var report = (await _checks.GetAsync(run.Id)).Report!;
        Assert.Equal(["可以退貨嗎？", Rows[0].Instruction], report.Rows.Select(r => r.Question));
        Assert.Equal(1.0, report.FineTunedScore);
        Assert.Equal(2, report.DatasetRows);
    }

    [Fact]
    public async Task Starts_once_per_run_and_a_new_service_reads_the_stored_answers_without_asking_again()
    {
        int id = await CompletedRunAsync();

        await _checks.StartIfMissingAsync(id);
        await _checks.WhenDone(id);
        await _checks.StartIfMissingAsync(id);
        await _checks.WhenDone(id);
        Assert.Equal(2 * Rows.Length, _generator.Requests.Count);

        // After a restart (a new service, a new page): the stored check, nothing generated.
        var fresh = new KnowingChatGenerator(new Dictionary<string, string>());
        var restarted = NewService(fresh);
        await restarted.StartIfMissingAsync(id);
        var state = await restarted.GetAsync(id);
        Assert.Empty(fresh.Requests);
        Assert.False(state.Running);
        Assert.Equal(LearningCheckStatus.Completed, state.Stored!.Status);
        Assert.Equal(Rows.Length, state.Report!.Rows.Count);
    }

    [Fact]
    public async Task A_run_that_is_not_completed_or_has_no_adapter_is_not_checked()
    {
        var queued = await _services.Store.CreateAsync(Settings(), Rows, "faq.xlsx", null);
        var noAdapter = await _services.Store.CreateAsync(Settings(), Rows, "faq.xlsx", null);
        await _services.Store.SetStatusAsync(noAdapter.Id, RunStatus.Completed);

        await _checks.StartIfMissingAsync(queued.Id);
        await _checks.StartIfMissingAsync(noAdapter.Id);
        await _checks.RerunAsync(noAdapter.Id);

        Assert.Empty(_generator.Requests);
        Assert.Null((await _checks.GetAsync(queued.Id)).Stored);
    }

    [Fact]
    public async Task Starts_by_itself_when_a_run_completes_after_the_training_has_left_the_device()
    {
        var run = await _queue.StartNewAsync(Settings(), Rows, "faq.xlsx", null);
        await _runner.Script(run.Id).Started.Task.WaitAsync(TimeSpan.FromSeconds(10));
        WriteAdapter(run.Id);
        _runner.Script(run.Id).Finish(0.5);

        await WaitUntilAsync(async () => (await _checks.GetAsync(run.Id)).Stored is not null);
        Assert.Equal(LearningCheckStatus.Completed, (await _checks.GetAsync(run.Id)).Stored!.Status);
        Assert.Equal(2 * Rows.Length, _generator.Requests.Count);
    }

    [Fact]
    public async Task Waits_while_another_run_trains_on_the_device()
    {
        int id = await CompletedRunAsync();
        var training = await _queue.StartNewAsync(Settings(), Rows, "faq.xlsx", null);
        await _runner.Script(training.Id).Started.Task.WaitAsync(TimeSpan.FromSeconds(10));

        await _checks.StartIfMissingAsync(id);
        await WaitUntilAsync(async () => (await _checks.GetAsync(id)).Waiting);
        await Task.Delay(700); // more than one look at the queue
        Assert.Empty(_generator.Requests);

        _runner.Script(training.Id).Finish(0.5);
        await _checks.WhenDone(id);
        Assert.Equal(LearningCheckStatus.Completed, (await _checks.GetAsync(id)).Stored!.Status);
        Assert.Equal(2 * Rows.Length, _generator.Requests.Count);
    }

    [Fact]
    public async Task A_rerun_replaces_the_stored_answers_and_shows_progress_while_it_asks()
    {
        int id = await CompletedRunAsync();
        await _checks.RunAsync(id, CancellationToken.None);

        _generator.Gate = new TaskCompletionSource();
        await _checks.RerunAsync(id);
        await WaitUntilAsync(() => Task.FromResult(_generator.Requests.Count > 2 * Rows.Length));
        var running = await _checks.GetAsync(id);
        Assert.True(running.Running);
        Assert.Equal((0, Rows.Length), (running.Asked, running.Total));
        _generator.Gate.SetResult();
        await _checks.WhenDone(id);

        Assert.Equal(4 * Rows.Length, _generator.Requests.Count);
        await using var db = await _services.Contexts.CreateDbContextAsync();
        Assert.Equal(1, await db.LearningChecks.CountAsync(c => c.RunId == id));
        Assert.Equal(Rows.Length, await db.Set<LearningCheckAnswer>().CountAsync(a => a.RunId == id));
    }

    [Fact]
    public async Task A_failing_generator_is_stored_as_failed_with_its_message_and_deleting_the_run_deletes_the_check()
    {
        int id = await CompletedRunAsync();
        var failing = NewService(new ThrowingGenerator());

        var check = await failing.RunAsync(id, CancellationToken.None);

        Assert.Equal(LearningCheckStatus.Failed, check.Status);
        var state = await failing.GetAsync(id);
        Assert.Equal("CUDA out of memory", state.Stored!.Error);
        Assert.Null(state.Report);

        await _services.Store.DeleteAsync(id);
        await using var db = await _services.Contexts.CreateDbContextAsync();
        Assert.False(await db.LearningChecks.AnyAsync(c => c.RunId == id));
    }

    private static async Task WaitUntilAsync(Func<Task<bool>> condition)
    {
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (!await condition())
        {
            if (DateTime.UtcNow > deadline) throw new TimeoutException("The condition did not come true within 20 s.");
            await Task.Delay(50);
        }
    }

    private sealed class ThrowingGenerator : IChatGenerator
    {
        public IAsyncEnumerable<FineTune.Engine.Generation.TextPiece> StreamAsync(ChatRequest request, CancellationToken cancellationToken) =>
            throw new InvalidOperationException("CUDA out of memory");
    }
}
