using FineTune.Engine.Backend;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Playwright;

namespace FineTune.Tests.Web.EndToEnd;

/// <summary>
/// The settings summary's gradient checkpointing line in a real browser, zh-TW and English: on this CPU machine the
/// tutorial's 4-bit run keeps the default (on); with the app's GPU pool given a fake H200, auto turns it off and says the
/// GPU has the memory; with a GPU that holds the run only with every layer recomputed, it stays on and says why; with one
/// between the two, only the first layers are recomputed and the line says how many. Screenshots
/// 3-settings-checkpointing-{cpu,h200,small,some-layers} (the page) and -summary (the summary box).
/// </summary>
[Collection(nameof(WizardEndToEndTests))]
[Trait(Category.Name, Category.EndToEnd)]
[Trait(Category.Name, Category.Slow)]
public sealed class SettingsCheckpointingEndToEndTests
{
    private static readonly GpuDevice FakeH200 = new(0, "Fake H200", 141_000_000_000);

    [BrowserFact]
    public Task Cpu_in_zh_TW() => SettingsStepAsync("zh-TW", gpu: null, "cpu", on: true, "梯度檢查點：開啟（4-bit 基礎模型的預設；沒有 GPU 記憶體可依據）");

    [BrowserFact]
    public Task Cpu_in_english() => SettingsStepAsync("en", gpu: null, "cpu", on: true, "Gradient checkpointing: on, the default with a 4-bit base (no GPU memory to decide by)");

    [BrowserFact]
    public Task Fake_h200_in_zh_TW() => SettingsStepAsync("zh-TW", FakeH200, "h200", on: false, "梯度檢查點：關閉，GPU 記憶體足夠：不開啟約需", "GPU 有 141.0 GB");

    [BrowserFact]
    public Task Fake_h200_in_english() => SettingsStepAsync("en", FakeH200, "h200", on: false, "Gradient checkpointing: off, the GPU has the memory: without it the run needs about", "of the GPU's 141.0 GB");

    /// <summary>The tutorial's default run (the default preset in 4 bits, the settings page's defaults) with and without checkpointing.</summary>
    private static (long With, long Without, FineTune.Engine.Models.ModelFacts Shape) DefaultRun()
    {
        var defaults = new TrainingSettings();
        var shape = ModelCatalog.FactsOf(defaults)!;
        return (TrainingEstimator.Memory(shape, defaults, gpuBytes: 1).Total, TrainingEstimator.Memory(shape, defaults, gpuBytes: 1L << 50).Total, shape);
    }

    /// <summary>A GPU that holds the default run only with every layer recomputed: its memory is the run's with checkpointing (90% of it holds no layer fewer).</summary>
    [BrowserFact]
    public Task Gpu_that_holds_it_only_with_every_layer_recomputed_in_english()
    {
        var (with, without, _) = DefaultRun();
        var gpu = new GpuDevice(0, "Fake small GPU", with);
        return SettingsStepAsync("en", gpu, "small", on: true, $"Gradient checkpointing: on, without it the run would need about {SettingsAdvisor.Gigabytes(without)} GB, " +
            $"too much of the GPU's {SettingsAdvisor.Gigabytes(gpu.MemoryBytes)} GB");
    }

    /// <summary>A GPU whose usable share (90%) is halfway between the default run's memory with and without checkpointing: only the first layers are recomputed, and the line says how many.</summary>
    [BrowserFact]
    public Task Gpu_between_the_two_in_zh_TW()
    {
        var (gpu, layers, of) = Between();
        return SettingsStepAsync("zh-TW", gpu, "some-layers", on: false, $"梯度檢查點：只開啟前 {layers} 層（共 {of} 層）", $"超出 GPU 的 {SettingsAdvisor.Gigabytes(gpu.MemoryBytes)} GB");
    }

    [BrowserFact]
    public Task Gpu_between_the_two_in_english()
    {
        var (gpu, layers, of) = Between();
        return SettingsStepAsync("en", gpu, "some-layers", on: false, $"Gradient checkpointing: on for the first {layers} of {of} layers", $"too much of the GPU's {SettingsAdvisor.Gigabytes(gpu.MemoryBytes)} GB");
    }

    private static (GpuDevice Gpu, int Layers, int Of) Between()
    {
        var (with, without, shape) = DefaultRun();
        var gpu = new GpuDevice(0, "Fake middle GPU", (long)((with + without) / 2 / FineTune.Engine.Training.TrainingMemory.UsableShare));
        var choice = TrainingEstimator.Memory(shape, new TrainingSettings(), gpu.MemoryBytes).Checkpointing;
        Assert.Equal(FineTune.Engine.Training.CheckpointingReason.SomeLayers, choice.Reason);
        return (gpu, choice.Layers!.Value, choice.OfLayers!.Value);
    }

    /// <summary>Model (default preset) → data (the tutorial's workbook) → settings; the line's on/off and texts; screenshots named by <paramref name="shot"/>.</summary>
    private static async Task SettingsStepAsync(string locale, GpuDevice? gpu, string shot, bool on, params string[] texts)
    {
        using var app = new WebAppHost(
            services => { if (gpu is not null) services.AddSingleton(new GpuPool([gpu])); },
            new Dictionary<string, string?> { ["FineTune:ModelRoots:0"] = TestFiles.Fixture("models") });
        await using var browser = await BrowserSession.StartAsync(app.BaseAddress, locale);
        var page = browser.Page;
        string name = $"{(locale == "en" ? "en-" : "")}3-settings-checkpointing-{shot}";
        try
        {
            // The default preset (Qwen2.5-0.5B-Instruct, 4-bit) and the tutorial's workbook, as a first-time user goes.
            await browser.GotoAsync("/");
            await page.Locator("[data-testid=model-next]").ClickAsync();
            await Assertions.Expect(page.Locator("[data-testid=step-data]")).ToBeVisibleAsync();
            await BrowserSession.ActUntilAsync(() => page.Locator("[data-testid=step-data] input[type=file]").Last.SetInputFilesAsync(TestFiles.Sample("tutorial-qa.xlsx")),
                timeout => Assertions.Expect(page.Locator("[data-testid=data-usable]")).ToContainTextAsync("5", new() { Timeout = timeout }), timeoutMs: 20_000);
            await page.Locator("[data-testid=data-next]").ClickAsync();

            var line = page.Locator("[data-testid=summary-checkpointing]");
            await Assertions.Expect(line).ToHaveAttributeAsync("data-on", on ? "true" : "false");
            foreach (string text in texts) await Assertions.Expect(line).ToContainTextAsync(text);
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
