using System.IO.Compression;
using System.Text.RegularExpressions;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using Microsoft.Playwright;

namespace FineTune.Tests.Web.EndToEnd;

/// <summary>
/// The wizard in a real browser against the real app (Kestrel on 127.0.0.1), zh-TW, with the tutorial's
/// workbook and the tiny Qwen2 fixture model. Screenshots of every step go to screenshots/ in the test output.
/// </summary>
/// <summary>
/// The browser tests wait on pages with fixed timeouts while the suite's other CPU-heavy tests (model training on
/// a 2-core machine) run in parallel; they timed out on any step now and then. They run after the parallel tests, alone.
/// </summary>
[CollectionDefinition(nameof(WizardEndToEndTests), DisableParallelization = true)]
public sealed class WizardEndToEndCollection;

[Collection(nameof(WizardEndToEndTests))]
[Trait(Category.Name, Category.EndToEnd)]
[Trait(Category.Name, Category.Slow)]
public sealed class WizardEndToEndTests
{
    private static WebAppHost StartApp() => new(settings: new Dictionary<string, string?>
    {
        ["FineTune:ModelRoots:0"] = TestFiles.Fixture("models"),
    });

    /// <summary>Model → data → settings: everything before training, with the checks a user sees.</summary>
    [BrowserFact]
    public async Task Model_upload_and_settings_steps_in_zh_TW()
    {
        using var app = StartApp();
        await using var browser = await BrowserSession.StartAsync(app.BaseAddress);
        try
        {
            await ModelUploadSettings(browser);
        }
        catch
        {
            await browser.RecordFailureAsync(nameof(Model_upload_and_settings_steps_in_zh_TW));
            throw;
        }
    }

    private static async Task ModelUploadSettings(BrowserSession browser)
    {
        var page = browser.Page;
        await browser.GotoAsync("/");

        // 1. Model: the tiny fixture from a local folder under the configured root.
        await Assertions.Expect(page.Locator("[data-testid=step-model]")).ToContainTextAsync("選擇基礎模型");
        await page.GetByLabel("本機資料夾").CheckAsync(new LocatorCheckOptions { Force = true });
        var folder = page.Locator("input[data-testid=model-local]");
        await folder.FillAsync(TestFiles.Fixture("models/qwen2"));
        await folder.PressAsync("Tab");
        await Assertions.Expect(page.Locator("[data-testid=model-local-problem]")).ToHaveCountAsync(0);
        await Assertions.Expect(page.Locator("[data-testid=model-memory]")).ToContainTextAsync("GB");
        await browser.ScreenshotAsync("1-model");
        await page.Locator("[data-testid=model-next]").ClickAsync();

        // 2. Data: the tutorial workbook.
        await Assertions.Expect(page.Locator("[data-testid=step-data]")).ToBeVisibleAsync();
        await page.Locator("input[type=file]").SetInputFilesAsync(TestFiles.Sample("tutorial-qa.xlsx"));
        await Assertions.Expect(page.Locator("[data-testid=data-usable]")).ToContainTextAsync("5 列中有 5 列");
        await Assertions.Expect(page.Locator("[data-testid=data-preview]")).ToContainTextAsync("你們的產品保固期是多久？");
        await Assertions.Expect(page.Locator("[data-testid=data-report]")).ToContainTextAsync("沒有發現問題");
        await browser.ScreenshotAsync("2-data");
        await page.Locator("[data-testid=data-next]").ClickAsync();

        // 3. Settings: tutorial defaults; 5 rows, batch 1 × 4 → 2 steps per epoch × 3 = 6 steps.
        var summary = page.Locator("[data-testid=summary-steps]");
        await Assertions.Expect(summary).ToContainTextAsync("共 6 步");
        var logging = page.Locator("[data-testid=settings-warning][data-code=LoggingAfterEnd]");
        await Assertions.Expect(logging).ToBeVisibleAsync();
        await logging.GetByRole(AriaRole.Button).ClickAsync();
        await Assertions.Expect(logging).ToHaveCountAsync(0);
        await Assertions.Expect(page.Locator("input[data-testid=field-logging-steps]")).ToHaveValueAsync("1");
        await page.Locator("[data-testid=preset-quick]").ClickAsync();
        await Assertions.Expect(summary).ToContainTextAsync("共 2 步");
        await page.Locator("[data-testid=preset-balanced]").ClickAsync();
        await Assertions.Expect(summary).ToContainTextAsync("共 6 步");
        await browser.ScreenshotAsync("3-settings");
    }

    /// <summary>
    /// A GBK file of Simplified Chinese reads right; a JSONL file with a broken line imports the rest and names the line;
    /// a reload and a language switch in the middle of the wizard come back to the same step with the data, edits and settings.
    /// </summary>
    [BrowserFact]
    public async Task Gbk_upload_broken_jsonl_reload_and_language_switch_keep_the_wizard()
    {
        using var app = StartApp();
        await using var browser = await BrowserSession.StartAsync(app.BaseAddress);
        string folder = Directory.CreateTempSubdirectory("finetune-e2e-").FullName;
        try
        {
            var page = browser.Page;
            await browser.GotoAsync("/");
            await page.Locator("[data-testid=model-next]").ClickAsync();
            await Assertions.Expect(page.Locator("[data-testid=step-data]")).ToBeVisibleAsync();

            // GBK (what Excel on a zh-CN Windows saves as CSV): detected, shown, header found.
            System.Text.Encoding.RegisterProvider(System.Text.CodePagesEncodingProvider.Instance);
            string gbk = Path.Combine(folder, "zh-cn.csv");
            await File.WriteAllBytesAsync(gbk, System.Text.Encoding.GetEncoding(936).GetBytes(
                "问题,回答\r\n可以退货吗？,购买后7天内可申请退货。\r\n运送需要多久？,一般3-5个工作天。\r\n怎么联系客服？,请拨打客服电话。\r\n"));
            await BrowserSession.ActUntilAsync(() => page.Locator("input[type=file]").Last.SetInputFilesAsync(gbk),
                timeout => Assertions.Expect(page.Locator("[data-testid=data-usable]")).ToContainTextAsync("3 列中有 3 列", new() { Timeout = timeout }));
            await Assertions.Expect(page.Locator("[data-testid=data-preview]")).ToContainTextAsync("可以退货吗？");
            await Assertions.Expect(page.Locator("[data-testid=data-encoding]")).ToContainTextAsync("GB18030");
            await browser.ScreenshotAsync("2-data-gbk");

            // JSONL with a broken line 3: the other three rows import, the report names the line.
            string jsonl = Path.Combine(folder, "qa.jsonl");
            await File.WriteAllTextAsync(jsonl, "{\"instruction\":\"保固多久？\",\"output\":\"一年。\"}\n{\"instruction\":\"可以退貨嗎？\",\"output\":\"七天內可以。\"}\n{\"instruction\":\"壞掉的行\",\"output\":\"x\",}\n{\"instruction\":\"怎麼聯絡客服？\",\"output\":\"寫信給我們。\"}\n");
            await page.Locator("input[type=file]").Last.SetInputFilesAsync(jsonl); // MudFileUpload adds a fresh input after each upload
            await Assertions.Expect(page.Locator("[data-testid=data-usable]")).ToContainTextAsync("3 列中有 3 列");
            await Assertions.Expect(page.Locator("[data-testid=data-report]")).ToContainTextAsync("1 行不是有效的 JSON（已略過）");
            await Assertions.Expect(page.Locator("[data-testid=data-report]")).ToContainTextAsync("第 3 行");
            await browser.ScreenshotAsync("2-data-jsonl");

            // Leave one row out, go to the settings, change one.
            await page.Locator("[data-testid=data-preview] input[type=checkbox]").First.ClickAsync(new LocatorClickOptions { Force = true });
            await Assertions.Expect(page.Locator("[data-testid=data-usable]")).ToContainTextAsync("3 列中有 2 列");
            await page.Locator("[data-testid=data-next]").ClickAsync();
            var rank = page.Locator("input[data-field=LoraR]");
            await BrowserSession.ActUntilAsync(async () => { await rank.FillAsync("8"); await rank.PressAsync("Tab"); },
                timeout => Assertions.Expect(rank).ToHaveValueAsync("8", new() { Timeout = timeout }));
            await Assertions.Expect(page.Locator("[data-testid=summary-steps]")).ToContainTextAsync("訓練 2 列");

            // Reload: the same step, rows and settings.
            await page.ReloadAsync();
            await page.Locator("[data-testid=interactive]").WaitForAsync(new LocatorWaitForOptions { State = WaitForSelectorState.Attached });
            await Assertions.Expect(page.Locator("[data-testid=step-settings]")).ToBeVisibleAsync();
            await Assertions.Expect(page.Locator("input[data-field=LoraR]")).ToHaveValueAsync("8");
            await Assertions.Expect(page.Locator("[data-testid=summary-steps]")).ToContainTextAsync("訓練 2 列");

            // Language switch: English, still the settings step with the same state.
            await page.Locator("[data-testid=language-switch]").ClickAsync();
            await page.Locator("[data-testid=interactive]").WaitForAsync(new LocatorWaitForOptions { State = WaitForSelectorState.Attached });
            await Assertions.Expect(page.Locator("[data-testid=step-settings]")).ToBeVisibleAsync();
            await Assertions.Expect(page.Locator("[data-testid=summary-steps]")).ToContainTextAsync("rows for training: 2");
            await Assertions.Expect(page.Locator("input[data-field=LoraR]")).ToHaveValueAsync("8");

            // An out-of-range value is explained at its field, not clamped.
            await BrowserSession.ActUntilAsync(async () => { await rank.FillAsync("0"); await rank.PressAsync("Tab"); },
                timeout => Assertions.Expect(page.Locator("[data-testid=field-error][data-field=LoraR]")).ToContainTextAsync("Allowed: 1 to 256.", new() { Timeout = timeout }));
            await Assertions.Expect(page.Locator("[data-testid=start-training]")).ToBeDisabledAsync();
            await browser.ScreenshotAsync("en-3-settings-invalid");
        }
        catch
        {
            await browser.RecordFailureAsync(nameof(Gbk_upload_broken_jsonl_reload_and_language_switch_keep_the_wizard));
            throw;
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>The template download serves a workbook the importer reads back.</summary>
    [BrowserFact]
    public async Task Template_download_and_bad_upload_message()
    {
        using var app = StartApp();
        await using var browser = await BrowserSession.StartAsync(app.BaseAddress);
        var page = browser.Page;
        await browser.GotoAsync("/");
        await page.Locator("[data-testid=model-next]").ClickAsync();

        var download = await page.RunAndWaitForDownloadAsync(() => page.Locator("[data-testid=data-template]").ClickAsync());
        Assert.Equal("finetune-qa-template.xlsx", download.SuggestedFilename);

        string bad = Path.Combine(Path.GetTempPath(), $"bad-{Guid.NewGuid():N}.xlsx");
        await File.WriteAllTextAsync(bad, "not a workbook");
        try
        {
            await page.Locator("input[type=file]").SetInputFilesAsync(bad);
            await Assertions.Expect(page.Locator("[data-testid=data-error]")).ToContainTextAsync("無法讀取這個活頁簿");
        }
        finally
        {
            File.Delete(bad);
        }
    }

    /// <summary>
    /// The whole wizard on the tiny Qwen2 fixture: train with the engine (loss points arrive live), reload,
    /// chat (an answer streams in), download the adapter zip.
    /// </summary>
    [BrowserFact]
    public async Task Whole_wizard_trains_chats_and_downloads_the_adapter()
    {
        using var app = StartApp();
        await using var browser = await BrowserSession.StartAsync(app.BaseAddress);
        try
        {
            await WholeWizard(browser, Zh);
        }
        catch
        {
            await browser.RecordFailureAsync(nameof(Whole_wizard_trains_chats_and_downloads_the_adapter));
            throw;
        }
    }

    /// <summary>The same wizard in English: every step's screenshot in both languages (docs/screenshots/en-*.png).</summary>
    [BrowserFact]
    public async Task Whole_wizard_in_english()
    {
        using var app = StartApp();
        await using var browser = await BrowserSession.StartAsync(app.BaseAddress, "en");
        try
        {
            await WholeWizard(browser, En);
        }
        catch
        {
            await browser.RecordFailureAsync(nameof(Whole_wizard_in_english));
            throw;
        }
    }

    /// <summary>What the tests read on the pages, per language; screenshots of English pages are prefixed "en-".</summary>
    private sealed record Texts(string Prefix, string LocalFolder, string TrainDone);

    private static readonly Texts Zh = new("", "本機資料夾", "訓練完成");
    private static readonly Texts En = new("en-", "Folder on this computer", "Training finished");

    private static async Task WholeWizard(BrowserSession browser, Texts t)
    {
        var page = browser.Page;
        await browser.GotoAsync("/");

        await page.GetByLabel(t.LocalFolder).CheckAsync(new LocatorCheckOptions { Force = true });
        var folder = page.Locator("input[data-testid=model-local]");
        await folder.FillAsync(TestFiles.Fixture("models/qwen2"));
        await folder.PressAsync("Tab");
        if (t == En) await browser.ScreenshotAsync(t.Prefix + "1-model");
        await page.Locator("[data-testid=model-next]").ClickAsync();
        // The data step's own input, once the step is shown: a file set on an input the stepper is still replacing is lost.
        await Assertions.Expect(page.Locator("[data-testid=step-data]")).ToBeVisibleAsync();
        await BrowserSession.ActUntilAsync(() => page.Locator("[data-testid=step-data] input[type=file]").Last.SetInputFilesAsync(TestFiles.Sample("tutorial-qa.xlsx")),
            timeout => Assertions.Expect(page.Locator("[data-testid=data-usable]")).ToContainTextAsync("5", new() { Timeout = timeout }), timeoutMs: 20_000);
        if (t == En) await browser.ScreenshotAsync(t.Prefix + "2-data");
        await page.Locator("[data-testid=data-next]").ClickAsync();
        await page.Locator("[data-testid=settings-warning][data-code=LoggingAfterEnd]").GetByRole(AriaRole.Button).ClickAsync();
        if (t == En) await browser.ScreenshotAsync(t.Prefix + "3-settings");
        await page.Locator("[data-testid=start-training]").ClickAsync();

        // 4. Train: the URL names the run; loss points arrive over the live connection.
        // Training starts at once and shares the machine's cores with the page: wait for the URL, not for a full load.
        // The URL is read from the page itself: Blazor moves to the run with history.pushState, and in CI's full run Playwright's
        // navigation wait missed that move twice while the page already showed the run at /runs/1 (its failure page).
        await Assertions.Expect(page.Locator("[data-testid=train-status]")).ToBeVisibleAsync(new() { Timeout = 120_000 });
        Assert.Matches("^/runs/\\d+$", await page.EvaluateAsync<string>("() => location.pathname"));
        await Assertions.Expect(page.Locator("[data-testid=loss-chart]")).Not.ToHaveAttributeAsync("data-points", "0", new() { Timeout = 300_000 });
        await browser.ScreenshotAsync(t.Prefix + "4-train-live");
        await Assertions.Expect(page.Locator("[data-testid=train-status]")).ToHaveAttributeAsync("data-status", "Completed", new() { Timeout = 600_000 });
        // A reload returns to the same run.
        await page.ReloadAsync();
        await Assertions.Expect(page.Locator("[data-testid=train-status]")).ToHaveAttributeAsync("data-status", "Completed");
        // The way forward: a finished run says so and offers the next actions; no time left is shown.
        await Assertions.Expect(page.Locator("[data-testid=train-done]")).ToContainTextAsync(t.TrainDone);
        await Assertions.Expect(page.Locator("[data-testid=train-eta]")).ToHaveTextAsync("—");
        // "Did it learn?": the five training questions are asked to both models by themselves, and the reading follows.
        await Assertions.Expect(page.Locator("[data-testid=learning-check-summary]")).ToContainTextAsync(t == En ? "Answers changed" : "回答有改變", new() { Timeout = 600_000 });
        await Assertions.Expect(page.Locator("[data-testid=learning-check-table] tbody tr")).ToHaveCountAsync(5);
        await browser.ScreenshotAsync(t.Prefix + "4-train");

        // 5. Test: an answer streams in; the next question is asked with the first turn in context.
        await page.Locator("[data-testid=next-test]").ClickAsync();
        await Assertions.Expect(page.Locator("[data-testid=step-test]")).ToBeVisibleAsync();
        const string first = "你們的產品保固期是多久？", second = "可以退貨嗎？";
        await page.Locator("textarea[data-testid=chat-prompt]").FillAsync(first);
        await page.Locator("[data-testid=chat-send]").ClickAsync();
        await Assertions.Expect(page.Locator("[data-testid=chat-answer]")).Not.ToBeEmptyAsync(new() { Timeout = 120_000 });
        await Assertions.Expect(page.Locator("[data-testid=chat-new]")).ToBeEnabledAsync(new() { Timeout = 300_000 }); // generation finished
        string firstAnswer = (await page.Locator("[data-testid=chat-answer]").TextContentAsync())!;
        await page.Locator("textarea[data-testid=chat-prompt]").FillAsync(second);
        await page.Locator("[data-testid=chat-send]").ClickAsync();
        await Assertions.Expect(page.Locator("[data-testid=chat-turn]")).ToHaveCountAsync(2);
        await Assertions.Expect(page.Locator("[data-testid=chat-new]")).ToBeEnabledAsync(new() { Timeout = 300_000 });
        await Assertions.Expect(page.Locator("[data-testid=chat-usage]")).ToHaveCountAsync(2);
        // The model read both turns: the second prompt's token count is that of the conversation in the run's (tutorial) layout.
        var template = PromptTemplate.Create(new PromptTemplateSettings(PromptStyle.Tutorial), TokenizerLoader.Load(TestFiles.Fixture("models/qwen2")));
        int expected = template.EncodePrompt([ChatMessage.User(first), ChatMessage.Assistant(firstAnswer), ChatMessage.User(second)]).Count;
        Assert.Equal(expected.ToString(System.Globalization.CultureInfo.InvariantCulture), await page.Locator("[data-testid=chat-usage]").Nth(1).GetAttributeAsync("data-prompt-tokens"));
        await browser.ScreenshotAsync(t.Prefix + "5-test");
        await page.Locator("[data-testid=chat-new]").ClickAsync();
        await Assertions.Expect(page.Locator("[data-testid=chat-turn]")).ToHaveCountAsync(0);

        // 6. Download: the zip holds the PEFT adapter files.
        await page.Locator("[data-testid=step-test] [data-testid=next-download]").ClickAsync();
        await Assertions.Expect(page.Locator("[data-testid=step-download]")).ToBeVisibleAsync();
        await Assertions.Expect(page.Locator("[data-testid=step-download]")).ToContainTextAsync("adapter_model.safetensors");
        await Assertions.Expect(page.Locator("[data-testid=next-new-run]")).ToBeVisibleAsync();
        await Assertions.Expect(page.Locator("[data-testid=new-run]")).ToHaveCountAsync(0); // one "new fine-tune" here, not the stepper's too
        await browser.ScreenshotAsync(t.Prefix + "6-download");
        if (t == En) // one language per page: no Chinese on the English download step
            Assert.DoesNotMatch(new Regex("[\\u4e00-\\u9fff]"), await page.Locator("[data-testid=wizard]").InnerTextAsync());
        var download = await page.RunAndWaitForDownloadAsync(() => page.Locator("[data-testid=download-adapter]").ClickAsync());
        string zipPath = Path.Combine(browser.ScreenshotDirectory, download.SuggestedFilename);
        await download.SaveAsAsync(zipPath);
        using var zip = ZipFile.OpenRead(zipPath);
        var names = zip.Entries.Select(e => e.FullName).ToArray();
        Assert.Contains("adapter_config.json", names);
        Assert.Contains("adapter_model.safetensors", names);
        Assert.Contains("loss.csv", names);
        Assert.Contains("README.md", names);
        Assert.Equal(names.Distinct().Count(), names.Length);
    }
}
