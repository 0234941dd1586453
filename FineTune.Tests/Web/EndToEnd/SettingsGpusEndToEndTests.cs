using FineTune.Engine.Backend;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Runs;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Playwright;
using TorchSharp;

namespace FineTune.Tests.Web.EndToEnd;

/// <summary>
/// The settings summary's time on a machine with two GPUs, in a real browser, zh-TW and English: the app's backend and GPU
/// pool given two fake H200s. Auto keeps the tutorial's short run on one GPU; with every GPU chosen the rough time line is
/// the time on both and says so. Screenshots 3-settings-time-2gpus (the page) and -summary (the summary box).
/// </summary>
[Collection(nameof(WizardEndToEndTests))]
[Trait(Category.Name, Category.EndToEnd)]
[Trait(Category.Name, Category.Slow)]
public sealed class SettingsGpusEndToEndTests
{
    private static readonly BackendInfo TwoGpus = new(DeviceType.CUDA, "CUDA: 2 x Fake H200", "test backend", "test", "Fake H200", 141_000_000_000)
    {
        Gpus = [new GpuDevice(0, "Fake H200", 141_000_000_000), new GpuDevice(1, "Fake H200", 141_000_000_000)],
        SupportsBFloat16 = true,
    };

    [BrowserFact]
    public Task Two_gpus_in_zh_TW() => TimeOnTwoGpusAsync("zh-TW", "全部 2 張 GPU", "時間：2 張 GPU 約", "時間：約");

    [BrowserFact]
    public Task Two_gpus_in_english() => TimeOnTwoGpusAsync("en", "All 2 GPUs", "on 2 GPUs (rough:", "Time: about");

    /// <summary>Model (default preset) → data (the tutorial's workbook) → settings; the time line on one GPU (Auto), then on both.</summary>
    private static async Task TimeOnTwoGpusAsync(string locale, string allGpus, string onTwo, string onOne)
    {
        using var app = new WebAppHost(
            services =>
            {
                services.AddSingleton(TwoGpus);
                services.AddSingleton(new GpuPool(TwoGpus.Gpus));
            },
            new Dictionary<string, string?> { ["FineTune:ModelRoots:0"] = TestFiles.Fixture("models") });
        await using var browser = await BrowserSession.StartAsync(app.BaseAddress, locale);
        var page = browser.Page;
        string name = $"{(locale == "en" ? "en-" : "")}3-settings-time-2gpus";
        try
        {
            await browser.GotoAsync("/");
            await page.Locator("[data-testid=model-next]").ClickAsync();
            await Assertions.Expect(page.Locator("[data-testid=step-data]")).ToBeVisibleAsync();
            await BrowserSession.ActUntilAsync(() => page.Locator("[data-testid=step-data] input[type=file]").Last.SetInputFilesAsync(TestFiles.Sample("tutorial-qa.xlsx")),
                timeout => Assertions.Expect(page.Locator("[data-testid=data-usable]")).ToContainTextAsync("5", new() { Timeout = timeout }), timeoutMs: 20_000);
            await page.Locator("[data-testid=data-next]").ClickAsync();

            var time = page.Locator("[data-testid=summary-time]");
            // Auto: the tutorial's five rows take seconds on one GPU, so the run takes one.
            await Assertions.Expect(time).ToHaveAttributeAsync("data-gpus", "1");
            await Assertions.Expect(time).ToContainTextAsync(onOne);
            await browser.SelectAsync("settings-gpus", allGpus);
            await Assertions.Expect(time).ToHaveAttributeAsync("data-gpus", "2");
            await Assertions.Expect(time).ToContainTextAsync(onTwo);
            await browser.ScreenshotAsync(name);
            await page.Locator("[data-testid=settings-summary]").ScreenshotAsync(new LocatorScreenshotOptions { Path = Path.Combine(browser.ScreenshotDirectory, name + "-summary.png") });
        }
        catch
        {
            await browser.RecordFailureAsync(name);
            throw;
        }
    }
}
