using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using FineTune.Web.Features.Learning;

namespace FineTune.Tests.Web.Features.Learning;

/// <summary>Which questions the check asks and how its stored answers read: counts, averages, verdicts.</summary>
public sealed class LearningCheckReportTests
{
    [Fact]
    public void A_small_set_is_asked_whole_and_a_big_one_by_twenty_rows_spread_evenly()
    {
        Assert.Equal([0, 1, 2, 3, 4], LearningCheckSample.Rows(5));
        Assert.Equal(Enumerable.Range(0, 20), LearningCheckSample.Rows(20));
        Assert.Equal(Enumerable.Range(0, 20).Select(i => i * 25), LearningCheckSample.Rows(500));
        var rows = LearningCheckSample.Rows(45);
        Assert.Equal(20, rows.Count);
        Assert.Equal(0, rows[0]);
        Assert.Equal(42, rows[^1]); // 19 × 45 ÷ 20
        Assert.Equal(rows.Count, rows.Distinct().Count());
        Assert.Empty(LearningCheckSample.Rows(0));
    }

    [Theory]
    [InlineData("是", 32)]
    [InlineData("我們的產品提供一年免費保固服務，在保固期內如有任何品質問題都可以免費維修或更換。", 80)]
    [InlineData(
        "A long answer, longer than one hundred and twenty-eight characters, so that twice its length is above the limit of two hundred fifty-six tokens.", 256)]
    public void An_answer_may_be_twice_the_expected_length_within_bounds(string expected, int tokens)
    {
        Assert.Equal(tokens, LearningCheckSample.MaxNewTokens(expected));
    }

    [Fact]
    public void The_question_is_asked_as_trained_with_the_rows_system_prompt_and_input()
    {
        var questions = LearningCheckSample.Questions([new QaRow("翻譯成英文", "Hello", Input: "你好", System: "你是翻譯"), new QaRow("可以退貨嗎？", "可以")], []);
        var messages = questions[0].Messages;
        Assert.Equal(["system", "user"], messages.Select(m => m.Role));
        Assert.Equal("你是翻譯", messages[0].Content);
        Assert.Equal("翻譯成英文\n\n你好", messages[1].Content);
        Assert.Equal(("翻譯成英文\n\n你好", "Hello"), (questions[0].Question, questions[0].Expected));
        Assert.Equal(["user"], questions[1].Messages.Select(m => m.Role));
    }

    [Fact]
    public void A_conversation_is_asked_its_last_question_after_the_turns_before_it()
    {
        var conversation = new Conversation(
        [
            ChatMessage.System("你是客服。"), ChatMessage.User("保固多久？"), ChatMessage.Assistant("一年。"),
            ChatMessage.User("運費誰付？"), ChatMessage.Assistant("滿千免運。"),
        ], 2);

        var question = Assert.Single(LearningCheckSample.Questions([], [conversation]));

        Assert.Equal(("運費誰付？", "滿千免運。"), (question.Question, question.Expected));
        Assert.Equal(conversation.Messages.Take(4), question.Messages);
    }

    private static readonly QaRow[] Dataset =
    [
        new("保固多久？", "一年保固。"),
        new("可以退貨嗎？", "七天內可以退貨。"),
        new("怎麼聯繫客服？", "請撥 0800-123-456。"),
        new("運費多少？", "滿千免運。"),
    ];

    private static readonly IReadOnlyList<FineTune.Web.Features.Chat.BatchTestRow> Questions = LearningCheckSample.Questions(Dataset, []);

    private static LearningCheckAnswer Answer(int row, string baseAnswer, string fineTuned) => new() { RowIndex = row, BaseAnswer = baseAnswer, FineTunedAnswer = fineTuned };

    [Fact]
    public void The_report_counts_changed_answers_and_averages_both_models_scores()
    {
        // Stored out of order: the report follows the dataset's order.
        var report = LearningCheckReport.From(
        [
            Answer(2, "我不知道", "請撥 0800-123-456。"),
            Answer(0, "保固", "一年保固。"),
            Answer(1, "七天內可以退貨。", "七天內可以退貨。"),
        ], Questions);

        Assert.Equal([0, 1, 2], report.Rows.Select(r => r.RowIndex));
        Assert.Equal(["保固多久？", "可以退貨嗎？", "怎麼聯繫客服？"], report.Rows.Select(r => r.Question));
        Assert.Equal("七天內可以退貨。", report.Rows[1].Expected);
        Assert.Equal(2, report.ChangedCount); // row 1: the same answer from both
        Assert.False(report.Rows[1].Changed);
        Assert.Equal([1.0, 1.0, 1.0], report.Rows.Select(r => r.FineTunedScore));
        // base: "保固" vs "一年保固。" = 1 − 3/5; row 1 identical; "我不知道" vs 16 characters: no position in common.
        Assert.Equal((0.4 + 1.0 + 0.0) / 3, report.BaseScore, 10);
        Assert.Equal(1.0, report.FineTunedScore, 10);
        Assert.Equal(LearningVerdict.Learned, report.Verdict);
        Assert.True(report.Sampled); // 3 of the 4 rows
        Assert.Equal(4, report.DatasetRows);
    }

    [Theory]
    [InlineData("一年保固。", "一年保固。", LearningVerdict.Learned)]
    [InlineData("一年保固", "一年保固", LearningVerdict.Learned)] // 1 − 1/5 = 0.8: learned from there
    [InlineData("一年", "一年保", LearningVerdict.Partly)] // 1 − 2/5 = 0.6
    [InlineData("我不知道", "我不知道", LearningVerdict.NotYet)]
    public void The_verdict_reads_the_fine_tuned_models_average(string baseAnswer, string fineTuned, LearningVerdict verdict)
    {
        var report = LearningCheckReport.From([Answer(0, baseAnswer, fineTuned)], Questions);
        Assert.Equal(verdict, report.Verdict);
    }

    [Fact]
    public void Clearly_closer_than_the_base_model_counts_as_partly_learned_even_below_one_half()
    {
        // Expected "滿千免運。": the base model shares nothing (0); "滿千元才能免運費喔" keeps 滿千…免運, 5 edits of 9: 1 − 5/9 ≈ 0.44.
        var report = LearningCheckReport.From([Answer(3, "不知道", "滿千元才能免運費喔")], Questions);
        Assert.Equal(1 - 5.0 / 9, report.FineTunedScore, 10);
        Assert.Equal(0.0, report.BaseScore, 10);
        Assert.Equal(LearningVerdict.Partly, report.Verdict);
        Assert.Equal(LearningVerdict.NotYet, report.Rows[0].Verdict); // per question, the thresholds alone
    }
}
