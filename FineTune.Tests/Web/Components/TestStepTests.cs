using Bunit;
using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Web.Features.Runs;
using FineTune.Web.Components.Pages.Wizard.Test;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using Microsoft.Extensions.DependencyInjection;

namespace FineTune.Tests.Web.Components;

/// <summary>Step 5's chat keeps the conversation: history on the page, each question asked with the turns before it.</summary>
public sealed class TestStepTests : ComponentTestContext
{
    /// <summary>Answers stream on the thread pool; on a busy 2-core machine the default second is too short.</summary>
    private static readonly TimeSpan Wait = TimeSpan.FromSeconds(30);

    private async Task<int> FinishedRunAsync(PromptStyle style)
    {
        var run = await Runs.Store.CreateAsync(new TrainingSettings { Model = "Qwen/Qwen2.5-0.5B-Instruct", PromptTemplate = style }, RunStoreTests.Rows, "faq.xlsx", null);
        string adapter = Services.GetRequiredService<ArtifactPackager>().AdapterDirectory(run.Id);
        Directory.CreateDirectory(adapter);
        File.WriteAllText(Path.Combine(adapter, "adapter_config.json"), "{\"peft_type\": \"LORA\", \"r\": 16}");
        await Runs.Store.SetStatusAsync(run.Id, RunStatus.Completed);
        return run.Id;
    }

    private static void Ask(IRenderedComponent<TestStep> cut, string question)
    {
        cut.Find("textarea[data-testid=chat-prompt]").Input(question);
        cut.WaitForAssertion(() => Assert.False(cut.Find("[data-testid=chat-send]").HasAttribute("disabled")));
        cut.Find("[data-testid=chat-send]").Click();
    }

    [Fact]
    public async Task A_second_question_is_answered_with_the_first_turn_and_a_new_conversation_forgets_it()
    {
        int id = await FinishedRunAsync(PromptStyle.ModelChatTemplate);
        var cut = Render<TestStep>(p => p.Add(s => s.RunId, id));
        cut.WaitForAssertion(() => Assert.NotEmpty(cut.FindAll("[data-testid=api-snippet]")));
        Assert.Empty(cut.FindAll("[data-testid=chat-turn]"));
        Assert.True(cut.Find("[data-testid=chat-new]").HasAttribute("disabled"));
        cut.Find("textarea[data-testid=chat-system]").Change("你是客服。");

        Ask(cut, "可以退貨嗎？");
        cut.WaitForAssertion(() => Assert.Equal("answer 1", cut.Find("[data-testid=chat-answer]").TextContent), Wait);
        Assert.Equal("", cut.Find("textarea[data-testid=chat-prompt]").GetAttribute("value") ?? ""); // the question moved into the history
        Ask(cut, "運費誰付？");
        cut.WaitForAssertion(() => Assert.Equal(["answer 1", "answer 2"], cut.FindAll("[data-testid=chat-answer]").Select(a => a.TextContent)), Wait);

        Assert.Equal(["可以退貨嗎？", "運費誰付？"], cut.FindAll("[data-testid=chat-question]").Select(q => q.TextContent));
        var second = Chat.Requests[1];
        Assert.Equal([ChatMessage.System("你是客服。"), ChatMessage.User("可以退貨嗎？"), ChatMessage.Assistant("answer 1"), ChatMessage.User("運費誰付？")], second.Messages);
        Assert.Equal("<|im_start|>system\n你是客服。<|im_end|>\n<|im_start|>user\n可以退貨嗎？<|im_end|>\n<|im_start|>assistant\nanswer 1<|im_end|>\n" +
                     "<|im_start|>user\n運費誰付？<|im_end|>\n<|im_start|>assistant\n", Chat.RenderedPrompt(second));
        Assert.NotNull(second.AdapterDirectory);
        var usage = cut.FindAll("[data-testid=chat-usage]").Select(u => int.Parse(u.GetAttribute("data-prompt-tokens")!)).ToList();
        Assert.True(usage[1] > usage[0] + 3, $"the second prompt ({usage[1]} tokens) holds the first turn ({usage[0]} tokens)");
        Assert.Contains("提示", cut.Find("[data-testid=chat-usage]").TextContent);

        cut.Find("[data-testid=chat-new]").Click();
        Assert.Empty(cut.FindAll("[data-testid=chat-turn]"));
        Ask(cut, "運費誰付？");
        cut.WaitForAssertion(() => Assert.Equal(3, Chat.Requests.Count), Wait);
        Assert.Equal([ChatMessage.System("你是客服。"), ChatMessage.User("運費誰付？")], Chat.Requests[2].Messages);
    }

    [Fact]
    public async Task Comparing_shows_both_answers_per_turn()
    {
        int id = await FinishedRunAsync(PromptStyle.Tutorial);
        var cut = Render<TestStep>(p => p.Add(s => s.RunId, id));
        cut.WaitForAssertion(() => Assert.NotEmpty(cut.FindAll("[data-testid=api-snippet]")));
        cut.Find("input[type=checkbox]").Change(true);

        Ask(cut, "q1");
        cut.WaitForAssertion(() => Assert.Equal("answer 2", cut.Find("[data-testid=chat-answer-base]").TextContent), Wait);
        Assert.Equal("answer 1", cut.Find("[data-testid=chat-answer]").TextContent);
        Assert.Null(Chat.Requests[1].AdapterDirectory);
    }

    [Fact]
    public async Task The_system_prompt_is_off_where_the_template_has_no_place_for_it()
    {
        int id = await FinishedRunAsync(PromptStyle.Tutorial);
        var cut = Render<TestStep>(p => p.Add(s => s.RunId, id));
        cut.WaitForAssertion(() => Assert.True(cut.Find("textarea[data-testid=chat-system]").HasAttribute("disabled")));
        Assert.Contains("{system}", cut.Find("[data-testid=step-test]").TextContent);
    }

    [Fact]
    public async Task The_batch_test_of_a_chat_run_generates_each_conversations_last_answer_from_the_turns_before_it()
    {
        Conversation[] conversations =
        [
            new([ChatMessage.User("可以退貨嗎？"), ChatMessage.Assistant("七天內可以。"), ChatMessage.User("運費誰付？"), ChatMessage.Assistant("我們付。")], 2),
            new([ChatMessage.System("你是客服。"), ChatMessage.User("保固多久？"), ChatMessage.Assistant("一年。")], 6),
        ];
        var run = await Runs.Store.CreateChatAsync(new TrainingSettings { Model = "Qwen/Qwen2.5-0.5B-Instruct", PromptTemplate = PromptStyle.ModelChatTemplate }, conversations, "chat.jsonl", null);
        string adapter = Services.GetRequiredService<ArtifactPackager>().AdapterDirectory(run.Id);
        Directory.CreateDirectory(adapter);
        File.WriteAllText(Path.Combine(adapter, "adapter_config.json"), "{\"peft_type\": \"LORA\", \"r\": 16}");
        await Runs.Store.SetStatusAsync(run.Id, RunStatus.Completed);
        var cut = Render<TestStep>(p => p.Add(s => s.RunId, run.Id));
        cut.WaitForAssertion(() => Assert.False(cut.Find("[data-testid=batch-run]").HasAttribute("disabled")));

        cut.Find("[data-testid=batch-run]").Click();

        cut.WaitForAssertion(() => Assert.Equal(["answer 1", "answer 3"], cut.FindAll("[data-testid=batch-fine-tuned]").Select(c => c.TextContent)), Wait);
        Assert.Empty(cut.FindAll("[data-testid=chat-error]"));
        Assert.Equal(["使用者: 可以退貨嗎？\n助理: 七天內可以。", ""], cut.FindAll("[data-testid=batch-earlier]").Select(c => c.TextContent));
        Assert.Equal([.. conversations[0].Messages.Take(3)], Chat.Requests[0].Messages);
        Assert.Equal([.. conversations[0].Messages.Take(3)], Chat.Requests[1].Messages); // the base model gets the same history
        Assert.Equal([.. conversations[1].Messages.Take(2)], Chat.Requests[2].Messages);
        Assert.Contains("<|im_start|>user\n可以退貨嗎？<|im_end|>\n<|im_start|>assistant\n七天內可以。<|im_end|>\n<|im_start|>user\n運費誰付？", Chat.RenderedPrompt(Chat.Requests[0]));
    }
}
