using System.Text;
using System.Text.Json;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using Microsoft.Playwright;
using Xunit.Abstractions;

namespace FineTune.Tests.Web.EndToEnd;

/// <summary>
/// Issue 18, finding 10: a 45 MB CSV uploaded in the data step raised the app from 478 to 900 MB resident and it stayed
/// there after the tab closed. The real app (its build output, in a child process, so resident memory is its alone) is
/// driven by Chromium through the model and data steps with a generated 45 MB CSV; the tab is closed and the app's
/// resident memory must come back to within <see cref="RetainedBound"/> of what it was before the upload.
/// </summary>
[Collection(nameof(WizardEndToEndTests))]
[Trait(Category.Name, Category.EndToEnd)]
[Trait(Category.Name, Category.Slow)]
public sealed class UploadMemoryTests(ITestOutputHelper output)
{
    /// <summary>Resident memory the app may keep after the upload's circuit is gone (what is left: the GC's and the allocator's spare pages).</summary>
    private const long RetainedBound = 120L << 20;

    private const long MiB = 1L << 20;

    [BrowserFact]
    public async Task A_45_MB_csv_upload_gives_its_memory_back_after_the_tab_closes()
    {
        string csv = Path.Combine(Path.GetTempPath(), $"finetune-upload-{Guid.NewGuid():N}.csv");
        WriteCsv(csv, 45 * MiB);
        await using var app = WebAppProcess.Start(new Dictionary<string, string>
        {
            ["FineTune__ModelRoots__0"] = TestFiles.Fixture("models"),
        });
        try
        {
            (await app.FirstPageAsync()).Dispose();
            await using var browser = await BrowserSession.StartAsync(app.BaseAddress);
            var page = browser.Page;
            await browser.GotoAsync("/");
            await page.GetByLabel("本機資料夾").CheckAsync(new LocatorCheckOptions { Force = true });
            var folder = page.Locator("input[data-testid=model-local]");
            await folder.FillAsync(TestFiles.Fixture("models/qwen2"));
            await folder.PressAsync("Tab");
            await page.Locator("[data-testid=model-next]").ClickAsync();
            await Assertions.Expect(page.Locator("[data-testid=step-data]")).ToBeVisibleAsync();

            long before = await SettledResidentAsync(app);
            var memoryBefore = await HeapAsync(app);
            await page.Locator("input[type=file]").SetInputFilesAsync(csv);
            await Assertions.Expect(page.Locator("[data-testid=data-usable]")).ToBeVisibleAsync(new LocatorAssertionsToBeVisibleOptions { Timeout = 300_000 });
            string usable = await page.Locator("[data-testid=data-usable]").InnerTextAsync();
            long loaded = app.ResidentBytes(), peak = PeakResident(app);
            var memoryLoaded = await HeapAsync(app);

            // The user closes the tab: the page's unload handlers run, and Blazor's beacon ends the circuit at once.
            await page.CloseAsync(new PageCloseOptions { RunBeforeUnload = true });
            long after = long.MaxValue;
            string memoryAfter = "";
            for (var deadline = DateTime.UtcNow.AddSeconds(150); DateTime.UtcNow < deadline && after > before + RetainedBound;)
            {
                await Task.Delay(2000);
                after = app.ResidentBytes();
                memoryAfter = await HeapAsync(app);
            }
            output.WriteLine($"{usable}; resident MB: before {before / MiB}, loaded {loaded / MiB}, peak {peak / MiB}, after the tab closed {after / MiB}");
            output.WriteLine($"GC before: {memoryBefore}\nGC loaded: {memoryLoaded}\nGC after:  {memoryAfter}");
            output.WriteLine(string.Join("\n", app.OutputTail(20000).Split('\n').Where(l => l.Contains("reclaimed", StringComparison.OrdinalIgnoreCase))));
            Assert.True(after <= before + RetainedBound,
                $"The app kept {(after - before) / MiB} MB after the tab closed (before {before / MiB} MB, loaded {loaded / MiB} MB, after {after / MiB} MB); at most {RetainedBound / MiB} MB may stay.");
        }
        finally
        {
            File.Delete(csv);
        }
    }

    /// <summary>Resident memory once start-up's work has settled: two readings 2 s apart within 5 MB, at most 30 s.</summary>
    private static async Task<long> SettledResidentAsync(WebAppProcess app)
    {
        long last = app.ResidentBytes();
        for (int i = 0; i < 15; i++)
        {
            await Task.Delay(2000);
            long now = app.ResidentBytes();
            if (Math.Abs(now - last) < 5 * MiB) return now;
            last = now;
        }
        return last;
    }

    private static long PeakResident(WebAppProcess app)
    {
        foreach (string line in File.ReadLines($"/proc/{app.ProcessId}/status"))
            if (line.StartsWith("VmHWM:", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        return 0;
    }

    /// <summary>The app's own account of its memory (/healthz "memory" check): GC heap and committed bytes.</summary>
    private static async Task<string> HeapAsync(WebAppProcess app)
    {
        using var json = JsonDocument.Parse(await app.Client.GetStringAsync("/healthz"));
        return json.RootElement.GetProperty("checks").TryGetProperty("memory", out var memory) ? memory.GetProperty("description").GetString() ?? "" : "(no memory check)";
    }

    /// <summary>A Q&amp;A CSV of about <paramref name="bytes"/> bytes, UTF-8, questions and answers in Chinese with ASCII numbers.</summary>
    private static void WriteCsv(string path, long bytes)
    {
        using var writer = new StreamWriter(path, false, new UTF8Encoding(false));
        writer.Write("instruction,output\n");
        const string answer = "本產品提供一年保固，保固期間內非人為損壞可免費維修或更換，請保留購買發票並聯絡客服中心，我們會在三個工作天內回覆您的申請。";
        for (int i = 1; writer.BaseStream.Length < bytes; i++)
            writer.Write($"\"第 {i} 題：請問編號 {i * 7919 % 100003} 的產品保固期是多久？\",\"{answer}（案例 {i}）\"\n");
    }
}
