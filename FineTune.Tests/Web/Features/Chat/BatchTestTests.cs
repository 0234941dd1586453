using ClosedXML.Excel;
using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Chat;
using FineTune.Web.Features.Settings;

namespace FineTune.Tests.Web.Features.Chat;

/// <summary>The batch test on a chat dataset: each conversation's last assistant turn generated from the turns before it.</summary>
public class BatchTestTests
{
    private static readonly Conversation Shop = new(
    [
        ChatMessage.System("你是客服。"), ChatMessage.User("可以退貨嗎？"), ChatMessage.Assistant("七天內可以。"),
        ChatMessage.User("運費誰付？"), ChatMessage.Assistant("退貨運費由我們負擔。"),
    ], SourceRow: 2);

    [Fact]
    public void Each_conversation_asks_its_last_question_with_the_turns_before_it()
    {
        Conversation single = new([ChatMessage.User("hi"), ChatMessage.Assistant("hello")]);
        Conversation endsWithUser = new([ChatMessage.User("q"), ChatMessage.Assistant("a"), ChatMessage.User("q2")]); // its last answer is to "q"
        Conversation noQuestion = new([ChatMessage.System("s"), ChatMessage.Assistant("a")]);

        var rows = BatchTest.FromConversations([Shop, single, endsWithUser, noQuestion]).ToList();

        Assert.Equal(3, rows.Count);
        Assert.Equal(("運費誰付？", "退貨運費由我們負擔。"), (rows[0].Question, rows[0].Expected));
        Assert.Equal([ChatMessage.System("你是客服。"), ChatMessage.User("可以退貨嗎？"), ChatMessage.Assistant("七天內可以。")], rows[0].History);
        Assert.Equal([.. Shop.Messages.Take(4)], rows[0].Messages);
        Assert.Equal([ChatMessage.User("可以退貨嗎？"), ChatMessage.Assistant("七天內可以。")], rows[0].EarlierTurns);
        Assert.Equal(("hi", "hello"), (rows[1].Question, rows[1].Expected));
        Assert.Empty(rows[1].History);
        Assert.Equal(("q", "a"), (rows[2].Question, rows[2].Expected));
    }

    [Fact]
    public async Task Both_models_get_the_history_and_the_rendered_prompt_holds_every_turn()
    {
        var generator = new RecordingChatGenerator();
        var rows = BatchTest.FromConversations([Shop]).Concat(BatchTest.FromRows([new QaRow("保固多久？", "一年。")])).ToList();

        await BatchTest.RunAsync(rows, generator, (messages, fineTuned) =>
            new ChatRequest("m", ModelSource.Local, fineTuned ? "adapter" : null, messages, Template: new PromptTemplateSettings(PromptStyle.ModelChatTemplate)),
            () => Task.CompletedTask, CancellationToken.None);

        Assert.Equal(("answer 1", "answer 2"), (rows[0].FineTunedAnswer, rows[0].BaseAnswer));
        Assert.Equal(("answer 3", "answer 4"), (rows[1].FineTunedAnswer, rows[1].BaseAnswer));
        Assert.All(generator.Requests.Take(2), r => Assert.Equal([.. Shop.Messages.Take(4)], r.Messages));
        Assert.Equal(["adapter", null], generator.Requests.Take(2).Select(r => r.AdapterDirectory));
        Assert.Equal("<|im_start|>system\n你是客服。<|im_end|>\n<|im_start|>user\n可以退貨嗎？<|im_end|>\n<|im_start|>assistant\n七天內可以。<|im_end|>\n" +
                     "<|im_start|>user\n運費誰付？<|im_end|>\n<|im_start|>assistant\n", generator.RenderedPrompt(generator.Requests[1]));
        Assert.Equal([ChatMessage.User("保固多久？")], generator.Requests[2].Messages);
    }

    [Fact]
    public void The_sheet_has_the_earlier_turns_column_only_for_conversations()
    {
        string[] headers = ["問題", "預期答案", "原始模型", "微調後模型", "先前的對話"];
        var conversation = BatchTest.FromConversations([Shop]).ToList();
        using (var workbook = new XLWorkbook(new MemoryStream(BatchTestExport.ToExcel(conversation, headers, r => BatchTest.Transcript(r.EarlierTurns, "使用者", "助理")))))
        {
            var sheet = workbook.Worksheet(1);
            Assert.Equal("先前的對話", sheet.Cell(1, 5).GetString());
            Assert.Equal("使用者: 可以退貨嗎？\n助理: 七天內可以。", sheet.Cell(2, 5).GetString());
        }
        using (var workbook = new XLWorkbook(new MemoryStream(BatchTestExport.ToExcel(BatchTest.FromRows([new QaRow("q", "a")]).ToList(), headers))))
            Assert.True(workbook.Worksheet(1).Cell(1, 5).IsEmpty());
    }
}
