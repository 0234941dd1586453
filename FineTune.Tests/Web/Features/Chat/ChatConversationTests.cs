using FineTune.Engine.Generation;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Chat;
using FineTune.Web.Features.Settings;

namespace FineTune.Tests.Web.Features.Chat;

/// <summary>The test step's conversation: each question goes to the model with the earlier turns and the system prompt.</summary>
public class ChatConversationTests
{
    private static Func<IReadOnlyList<ChatMessage>, bool, ChatRequest> Requests(PromptStyle style) => (messages, fineTuned) =>
        new ChatRequest("model", ModelSource.Local, fineTuned ? "adapter" : null, messages, Template: new PromptTemplateSettings(style));

    [Theory]
    [InlineData(PromptStyle.Tutorial, "### 指令：\n可以退貨嗎？\n\n### 回應：\nanswer 1<|im_end|>### 指令：\n運費誰付？\n\n### 回應：\n")]
    [InlineData(PromptStyle.ModelChatTemplate, "<|im_start|>system\n你是客服。<|im_end|>\n<|im_start|>user\n可以退貨嗎？<|im_end|>\n<|im_start|>assistant\nanswer 1<|im_end|>\n<|im_start|>user\n運費誰付？<|im_end|>\n<|im_start|>assistant\n")]
    public async Task The_second_question_is_asked_with_the_first_turn(PromptStyle style, string secondPrompt)
    {
        var generator = new RecordingChatGenerator();
        var conversation = new ChatConversation { System = "你是客服。" };
        int changes = 0;
        Task Changed() { changes++; return Task.CompletedTask; }

        await conversation.AskAsync(generator, Requests(style), "可以退貨嗎？", compare: false, Changed, CancellationToken.None);
        var second = await conversation.AskAsync(generator, Requests(style), "運費誰付？", compare: false, Changed, CancellationToken.None);

        Assert.Equal("answer 2", second.FineTuned.Text);
        Assert.Equal(3, second.FineTuned.CompletionTokens);
        Assert.Equal(FinishReason.Stop, second.FineTuned.Finish);
        Assert.Equal(6, changes);
        Assert.Equal([ChatMessage.System("你是客服。"), ChatMessage.User("可以退貨嗎？"), ChatMessage.Assistant("answer 1"), ChatMessage.User("運費誰付？")], generator.Requests[1].Messages);
        Assert.Equal(secondPrompt, generator.RenderedPrompt(generator.Requests[1]));
        Assert.Equal(["可以退貨嗎？", "運費誰付？"], conversation.Exchanges.Select(e => e.Question));

        conversation.Clear();
        await conversation.AskAsync(generator, Requests(style), "運費誰付？", compare: false, Changed, CancellationToken.None);
        Assert.Equal([ChatMessage.System("你是客服。"), ChatMessage.User("運費誰付？")], generator.Requests[2].Messages);
    }

    [Fact]
    public async Task Compared_models_each_keep_their_own_answers()
    {
        var generator = new RecordingChatGenerator();
        var conversation = new ChatConversation();

        await conversation.AskAsync(generator, Requests(PromptStyle.Tutorial), "q1", compare: false, () => Task.CompletedTask, CancellationToken.None);
        await conversation.AskAsync(generator, Requests(PromptStyle.Tutorial), "q2", compare: true, () => Task.CompletedTask, CancellationToken.None);
        await conversation.AskAsync(generator, Requests(PromptStyle.Tutorial), "q3", compare: true, () => Task.CompletedTask, CancellationToken.None);

        // requests: 1 fine-tuned q1; 2 fine-tuned q2, 3 base q2; 4 fine-tuned q3, 5 base q3
        Assert.Equal(["answer 1", "answer 2"], generator.Requests[3].Messages.Where(m => m.Role == "assistant").Select(m => m.Content));
        Assert.Equal("adapter", generator.Requests[3].AdapterDirectory);
        // The base model had no answer to q1 (comparison off): it is given the fine-tuned one, then its own.
        Assert.Equal(["answer 1", "answer 3"], generator.Requests[4].Messages.Where(m => m.Role == "assistant").Select(m => m.Content));
        Assert.Null(generator.Requests[4].AdapterDirectory);
        Assert.Equal("answer 5", conversation.Exchanges[2].Base!.Text);
    }

    [Fact]
    public async Task A_stopped_answer_stays_in_the_history_as_far_as_it_got()
    {
        var generator = new RecordingChatGenerator { Gate = new TaskCompletionSource() };
        var conversation = new ChatConversation();
        using var stop = new CancellationTokenSource();
        bool firstPiece = false;

        var asking = conversation.AskAsync(generator, Requests(PromptStyle.Tutorial), "q1", false, () => { firstPiece = true; return Task.CompletedTask; }, stop.Token);
        while (!firstPiece) await Task.Delay(10);
        stop.Cancel();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => asking);

        generator.Gate = null;
        await conversation.AskAsync(generator, Requests(PromptStyle.Tutorial), "q2", false, () => Task.CompletedTask, CancellationToken.None);
        Assert.Equal([ChatMessage.User("q1"), ChatMessage.Assistant("answer "), ChatMessage.User("q2")], generator.Requests[1].Messages);
        Assert.Null(conversation.Exchanges[0].FineTuned.Finish);
    }

    [Fact]
    public async Task A_failed_question_leaves_the_history_as_it_was()
    {
        var conversation = new ChatConversation();
        await conversation.AskAsync(new RecordingChatGenerator(), Requests(PromptStyle.Tutorial), "q1", false, () => Task.CompletedTask, CancellationToken.None);

        await Assert.ThrowsAsync<InvalidOperationException>(() =>
            conversation.AskAsync(new FailingGenerator(), Requests(PromptStyle.Tutorial), "q2", false, () => Task.CompletedTask, CancellationToken.None));

        Assert.Equal(["q1"], conversation.Exchanges.Select(e => e.Question));
    }

    private sealed class FailingGenerator : IChatGenerator
    {
#pragma warning disable CS1998 // an async iterator that fails before its first piece
        public async IAsyncEnumerable<TextPiece> StreamAsync(ChatRequest request, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancellationToken)
        {
            throw new InvalidOperationException("no model");
#pragma warning disable CS0162
            yield break;
#pragma warning restore CS0162
        }
#pragma warning restore CS1998
    }
}
