using System.Globalization;
using Bunit;
using FineTune.Engine.Data;
using FineTune.Tests.Web.Support;
using FineTune.Web.Components.Pages.Wizard.Train;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.Learning;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;

namespace FineTune.Tests.Web.Components;

/// <summary>"Did it learn?" on the train step once a run completes, in zh-TW and English.</summary>
public sealed class LearningCheckPanelTests : ComponentTestContext
{
    private static readonly QaRow[] Rows =
    [
        .. FineTune.Web.Features.Data.QaTemplate.TutorialRows.Select((r, i) => new QaRow(r.Question, r.Answer, SourceRow: i + 2)),
    ];

    private async Task<int> CompletedRunAsync()
    {
        var run = await Runs.Store.CreateAsync(new TrainingSettings { Model = "Qwen/Qwen2.5-0.5B-Instruct" }, Rows, "faq.xlsx", null);
        string adapter = Services.GetRequiredService<ArtifactPackager>().AdapterDirectory(run.Id);
        Directory.CreateDirectory(adapter);
        File.WriteAllText(Path.Combine(adapter, "adapter_config.json"), "{\"peft_type\": \"LORA\", \"r\": 16}");
        await Runs.Store.SetStatusAsync(run.Id, RunStatus.Completed);
        return run.Id;
    }

    /// <summary>A check stored for the run: the fine-tuned model gives the expected answers to all but the last question.</summary>
    private async Task<int> CheckedRunAsync()
    {
        int id = await CompletedRunAsync();
        var answers = Rows.Take(Rows.Length - 1).ToDictionary(r => r.Instruction, r => r.Output);
        using var checks = new LearningCheckService(Runs.Contexts, Runs.Store, new KnowingChatGenerator(answers), Services.GetRequiredService<ArtifactPackager>(),
            Runs.Notifier, Queue, NullLogger<LearningCheckService>.Instance);
        await checks.RunAsync(id, CancellationToken.None);
        return id;
    }

    [Fact]
    public async Task Shows_the_stored_check_in_zh_TW_summary_reading_method_and_table()
    {
        int id = await CheckedRunAsync();

        var cut = Render<LearningCheckPanel>(p => p.Add(c => c.RunId, id));

        cut.WaitForAssertion(() => Assert.NotEmpty(cut.FindAll("[data-testid=learning-check-summary]")));
        Assert.Contains("學會了嗎？", cut.Markup);
        // 4 answers right, the last "?" (1 character of 60-odd): (4 × 100 % + ~0 %) ÷ 5 = 80 %; the base model says "我不知道。" to everything.
        Assert.Matches(@"回答有改變：5 題中 5 題 · 與預期答案相符：原始模型 \d+ % → 微調後 80 %", cut.Find("[data-testid=learning-check-summary]").TextContent.Trim());
        Assert.Equal("Learned", cut.Find("[data-testid=learning-check-verdict]").GetAttribute("data-verdict"));
        Assert.Contains("學會了：微調後的模型對訓練問題給出預期的答案。", cut.Find("[data-testid=learning-check-verdict]").TextContent);
        Assert.Contains("全部 5 個訓練問題。", cut.Find("[data-testid=learning-check-method]").TextContent);
        Assert.Contains("字元相似度：1 − 編輯距離 ÷ 較長文字的長度", cut.Find("[data-testid=learning-check-method]").TextContent);
        Assert.Equal(Rows.Select(r => r.Output).Take(4).Append("?"), cut.FindAll("[data-testid=learning-check-fine-tuned]").Select(e => e.TextContent));
        Assert.All(cut.FindAll("[data-testid=learning-check-base]"), e => Assert.Equal(KnowingChatGenerator.BaseAnswer, e.TextContent));
        var scores = cut.FindAll("[data-testid=learning-check-score]");
        Assert.Equal(["1", "1", "1", "1"], scores.Take(4).Select(s => s.GetAttribute("data-score")));
        Assert.Contains("100 %", scores[0].TextContent);
        Assert.Contains("學會", scores[0].TextContent);
        Assert.Contains("尚未", scores[4].TextContent);
        Assert.Contains("重新檢查", cut.Find("[data-testid=learning-check-rerun]").TextContent);
        Assert.DoesNotContain("Did it learn", cut.Markup);
        Assert.DoesNotContain("Learned_", cut.Markup); // no missing resource key
    }

    [Fact]
    public async Task Shows_the_stored_check_in_english()
    {
        CultureInfo.CurrentCulture = CultureInfo.CurrentUICulture = new CultureInfo("en-US");
        int id = await CheckedRunAsync();

        var cut = Render<LearningCheckPanel>(p => p.Add(c => c.RunId, id));

        cut.WaitForAssertion(() => Assert.NotEmpty(cut.FindAll("[data-testid=learning-check-summary]")));
        Assert.Contains("Did it learn?", cut.Markup);
        Assert.Matches(@"Answers changed: 5 of 5 · Matching the expected answer: base \d+ % → fine-tuned 80 %", cut.Find("[data-testid=learning-check-summary]").TextContent.Trim());
        Assert.Contains("It learned: the fine-tuned model gives the expected answers", cut.Find("[data-testid=learning-check-verdict]").TextContent);
        Assert.Contains("All 5 training questions.", cut.Find("[data-testid=learning-check-method]").TextContent);
        Assert.Contains("Closeness = character similarity", cut.Find("[data-testid=learning-check-method]").TextContent);
        Assert.Contains("not yet", cut.FindAll("[data-testid=learning-check-score]")[4].TextContent);
        Assert.Contains("Check again", cut.Find("[data-testid=learning-check-rerun]").TextContent);
        Assert.DoesNotContain("學會了嗎", cut.Markup);
        Assert.DoesNotContain("Learned_", cut.Markup);
    }

    [Fact]
    public async Task A_completed_run_without_a_check_is_checked_on_sight_and_reads_not_yet_with_the_tutorials_remedy()
    {
        int id = await CompletedRunAsync();

        var cut = Render<LearningCheckPanel>(p => p.Add(c => c.RunId, id));

        cut.WaitForAssertion(() => Assert.NotEmpty(cut.FindAll("[data-testid=learning-check-summary]")), TimeSpan.FromSeconds(10));
        Assert.Equal(2 * Rows.Length, Chat.Requests.Count); // the recording generator: "answer N", far from every expected answer
        Assert.Equal("NotYet", cut.Find("[data-testid=learning-check-verdict]").GetAttribute("data-verdict"));
        Assert.Contains("增加訓練輪數或加入更多資料", cut.Find("[data-testid=learning-check-verdict]").TextContent);

        // A reload shows the stored check: nothing is asked again.
        var again = Render<LearningCheckPanel>(p => p.Add(c => c.RunId, id));
        again.WaitForAssertion(() => Assert.NotEmpty(again.FindAll("[data-testid=learning-check-summary]")));
        Assert.Equal(2 * Rows.Length, Chat.Requests.Count);

        // "Check again" asks again.
        again.Find("[data-testid=learning-check-rerun]").Click();
        again.WaitForAssertion(() => Assert.Equal(4 * Rows.Length, Chat.Requests.Count), TimeSpan.FromSeconds(10));
        // The last answer is in before the check is stored: wait for the store, else the data folder is deleted under SQLite's writer.
        await Services.GetRequiredService<LearningCheckService>().WhenDone(id);
        again.WaitForAssertion(() => Assert.NotEmpty(again.FindAll("[data-testid=learning-check-summary]")), TimeSpan.FromSeconds(10));
        Assert.Equal("NotYet", again.Find("[data-testid=learning-check-verdict]").GetAttribute("data-verdict"));
    }

    [Fact]
    public async Task The_train_step_shows_the_check_once_the_run_has_completed()
    {
        var training = await Runs.Store.CreateAsync(new TrainingSettings(), Rows, "faq.xlsx", null);
        await Runs.Store.SetStatusAsync(training.Id, RunStatus.Training);
        var cut = Render<TrainStep>(p => p.Add(c => c.RunId, training.Id));
        cut.WaitForAssertion(() => Assert.NotEmpty(cut.FindAll("[data-testid=train-status]")));
        Assert.Empty(cut.FindAll("[data-testid=learning-check]"));

        int id = await CheckedRunAsync();
        cut = Render<TrainStep>(p => p.Add(c => c.RunId, id));
        cut.WaitForAssertion(() => Assert.NotEmpty(cut.FindAll("[data-testid=learning-check-summary]")));
        Assert.NotEmpty(cut.FindAll("[data-testid=train-done]"));
    }
}
