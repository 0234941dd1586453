using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Settings;
using Microsoft.Playwright;

namespace FineTune.Tests.Web.EndToEnd;

/// <summary>
/// Step 5 of a run trained on conversations with the model's chat template, in a real browser on the qwen2 fixture
/// (a seeded adapter stands in for training): a conversation with a system prompt, and the batch test generating each
/// conversation's last answer from the turns before it. Screenshots 5-test-chat-run (zh-TW and English).
/// </summary>
[Collection(nameof(WizardEndToEndTests))]
[Trait(Category.Name, Category.EndToEnd)]
[Trait(Category.Name, Category.Slow)]
public sealed class ChatRunEndToEndTests
{
    private static readonly Conversation[] Conversations =
    [
        new([ChatMessage.System("你是客服。"), ChatMessage.User("可以退貨嗎？"), ChatMessage.Assistant("七天內可以。"), ChatMessage.User("運費誰付？"), ChatMessage.Assistant("我們付。")], 2),
        new([ChatMessage.User("保固多久？"), ChatMessage.Assistant("一年。")], 7),
    ];

    [BrowserFact]
    public Task Chat_run_test_step_in_zh_TW() => TestStepAsync("zh-TW", "", "系統提示", "最多產生 token 數");

    [BrowserFact]
    public Task Chat_run_test_step_in_english() => TestStepAsync("en", "en-", "System prompt", "Max new tokens");

    private static async Task TestStepAsync(string locale, string prefix, string systemLabel, string maxTokensLabel)
    {
        using var app = new WebAppHost(settings: new Dictionary<string, string?> { ["FineTune:ModelRoots:0"] = TestFiles.Fixture("models") });
        int runId = await FinishedRuns.CreateAsync(app, store => store.CreateChatAsync(
            new TrainingSettings { Source = ModelSource.Local, Model = TestFiles.Fixture("models/qwen2"), PromptTemplate = PromptStyle.ModelChatTemplate },
            Conversations, "chat.jsonl", null));
        await using var browser = await BrowserSession.StartAsync(app.BaseAddress, locale);
        var page = browser.Page;
        try
        {
            await browser.GotoAsync($"/runs/{runId}");
            await page.Locator("[data-testid=next-test]").ClickAsync();
            await Assertions.Expect(page.Locator("[data-testid=step-test]")).ToBeVisibleAsync();
            await page.GetByLabel(maxTokensLabel, new() { Exact = true }).FillAsync("12"); // short answers
            var system = page.Locator("textarea[data-testid=chat-system]");
            await Assertions.Expect(system).ToBeEnabledAsync(); // the chat template has a place for it
            await Assertions.Expect(page.Locator("[data-testid=step-test]")).ToContainTextAsync(systemLabel);
            await system.FillAsync("你是客服。");

            string[] questions = ["可以退貨嗎？", "運費誰付？"];
            for (int i = 0; i < questions.Length; i++)
            {
                await page.Locator("textarea[data-testid=chat-prompt]").FillAsync(questions[i]);
                await page.Locator("[data-testid=chat-send]").ClickAsync();
                await Assertions.Expect(page.Locator("[data-testid=chat-turn]")).ToHaveCountAsync(i + 1); // asked (busy from here)
                await Assertions.Expect(page.Locator("[data-testid=chat-new]")).ToBeEnabledAsync(new() { Timeout = 120_000 }); // answered
            }
            await Assertions.Expect(page.Locator("[data-testid=chat-usage]")).ToHaveCountAsync(2);
            // The second prompt is the whole conversation in the model's chat template, the system prompt first.
            string firstAnswer = (await page.Locator("[data-testid=chat-answer]").First.TextContentAsync())!;
            var template = PromptTemplate.Create(new PromptTemplateSettings(), TokenizerLoader.Load(TestFiles.Fixture("models/qwen2")));
            int expected = template.EncodePrompt([ChatMessage.System("你是客服。"), ChatMessage.User("可以退貨嗎？"), ChatMessage.Assistant(firstAnswer), ChatMessage.User("運費誰付？")]).Count;
            Assert.Equal(expected.ToString(System.Globalization.CultureInfo.InvariantCulture), await page.Locator("[data-testid=chat-usage]").Nth(1).GetAttributeAsync("data-prompt-tokens"));

            // A reload keeps the conversation (the wizard's draft): the same turns, answers and system prompt.
            await page.ReloadAsync();
            await page.Locator("[data-testid=interactive]").WaitForAsync(new LocatorWaitForOptions { State = WaitForSelectorState.Attached });
            await Assertions.Expect(page.Locator("[data-testid=chat-turn]")).ToHaveCountAsync(2);
            Assert.Equal(firstAnswer, await page.Locator("[data-testid=chat-answer]").First.TextContentAsync());
            await Assertions.Expect(page.Locator("textarea[data-testid=chat-system]")).ToHaveValueAsync("你是客服。");
            await Assertions.Expect(page.GetByLabel(maxTokensLabel, new() { Exact = true })).ToHaveValueAsync("12");
            await Assertions.Expect(page.Locator("[data-testid=chat-usage]").Nth(1)).ToHaveAttributeAsync("data-prompt-tokens", expected.ToString(System.Globalization.CultureInfo.InvariantCulture));

            await page.Locator("[data-testid=batch-run]").ClickAsync();
            await Assertions.Expect(page.Locator("[data-testid=batch-fine-tuned]")).ToHaveCountAsync(2);
            await Assertions.Expect(page.Locator("[data-testid=batch-run]")).ToBeEnabledAsync(new() { Timeout = 120_000 }); // all four answers done
            await Assertions.Expect(page.Locator("[data-testid=batch-earlier]").First).ToContainTextAsync("可以退貨嗎？");
            await Assertions.Expect(page.Locator("[data-testid=batch-table]")).ToContainTextAsync("運費誰付？");
            await page.EvaluateAsync("window.scrollTo(0, 0)"); // the fixed app bar is drawn where the page is scrolled to
            await browser.ScreenshotAsync(prefix + "5-test-chat-run");
        }
        catch
        {
            await browser.RecordFailureAsync(prefix + nameof(ChatRunEndToEndTests));
            throw;
        }
    }
}
