using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using Microsoft.Playwright;

namespace FineTune.Tests.Web.EndToEnd;

/// <summary>
/// Step 2 with a chat dataset (ShareGPT conversations in JSONL), in a real browser, in zh-TW and English: the format is
/// recognised, every conversation is previewed turn by turn with its roles in the page's language, a conversation that
/// does not end with the assistant is flagged and left out, and the count says conversations. Screenshots 2-data-chat.
/// </summary>
[Collection(nameof(WizardEndToEndTests))]
[Trait(Category.Name, Category.EndToEnd)]
[Trait(Category.Name, Category.Slow)]
public sealed class ChatDataStepEndToEndTests
{
    private const string ShareGpt =
        "{\"conversations\":[{\"from\":\"system\",\"value\":\"你是客服。\"},{\"from\":\"human\",\"value\":\"可以退貨嗎？\"},{\"from\":\"gpt\",\"value\":\"七天內可以。\"},{\"from\":\"human\",\"value\":\"運費誰付？\"},{\"from\":\"gpt\",\"value\":\"我們付。\"}]}\n"
        + "{\"conversations\":[{\"from\":\"human\",\"value\":\"How long is the warranty?\"},{\"from\":\"gpt\",\"value\":\"One year.\"}]}\n"
        + "{\"conversations\":[{\"from\":\"human\",\"value\":\"怎麼聯絡客服？\"}]}\n";

    [BrowserFact]
    public Task Chat_file_in_zh_TW() => DataStepAsync("zh-TW", "", "3 段對話中有 2 段會用於訓練", "助理", "使用者", "系統");

    [BrowserFact]
    public Task Chat_file_in_english() => DataStepAsync("en", "en-", "2 of 3 conversations will be used for training", "Assistant", "User", "System");

    private static async Task DataStepAsync(string locale, string prefix, string usable, string assistant, string user, string system)
    {
        using var app = new WebAppHost(settings: new Dictionary<string, string?> { ["FineTune:ModelRoots:0"] = TestFiles.Fixture("models") });
        await using var browser = await BrowserSession.StartAsync(app.BaseAddress, locale);
        string folder = Directory.CreateTempSubdirectory("finetune-e2e-").FullName;
        var page = browser.Page;
        try
        {
            await browser.GotoAsync("/");
            await page.Locator("[data-testid=model-next]").ClickAsync();
            await Assertions.Expect(page.Locator("[data-testid=step-data]")).ToBeVisibleAsync();
            string file = Path.Combine(folder, "support-chats.jsonl");
            await File.WriteAllTextAsync(file, ShareGpt);
            await page.Locator("[data-testid=step-data] input[type=file]").Last.SetInputFilesAsync(file);

            await Assertions.Expect(page.Locator("[data-testid=data-usable]")).ToContainTextAsync(usable);
            var conversations = page.Locator("[data-testid=data-conversations]");
            await Assertions.Expect(conversations.Locator("tbody tr")).ToHaveCountAsync(3);
            // The first conversation, turn by turn: system, user, assistant, user, assistant.
            var first = conversations.Locator("tbody tr").First.Locator(".chat-turn");
            await Assertions.Expect(first).ToHaveCountAsync(5);
            Assert.Equal(["system", "user", "assistant", "user", "assistant"],
                await first.EvaluateAllAsync<string[]>("turns => turns.map(t => t.dataset.role)"));
            await Assertions.Expect(first.Nth(0)).ToContainTextAsync(system);
            await Assertions.Expect(first.Nth(1)).ToContainTextAsync(user);
            await Assertions.Expect(first.Nth(2)).ToContainTextAsync(assistant);
            await Assertions.Expect(first.Nth(4)).ToContainTextAsync("我們付。");
            // The third ends with the user: flagged, its box unticked and disabled.
            var third = conversations.Locator("tbody tr").Nth(2);
            await Assertions.Expect(third.Locator(".mud-chip.mud-chip-color-error")).ToHaveCountAsync(1);
            await Assertions.Expect(third.Locator("input[type=checkbox]")).ToBeDisabledAsync();
            await browser.ScreenshotAsync(prefix + "2-data-chat");
        }
        catch
        {
            await browser.RecordFailureAsync(nameof(ChatDataStepEndToEndTests) + "-" + locale);
            throw;
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
