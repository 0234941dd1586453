using Microsoft.Playwright;

namespace FineTune.Tests.Web.EndToEnd;

/// <summary>
/// A Chromium found on this machine (<see cref="Chromium"/>) driven by Playwright's bundled driver (no browser download).
/// Tests using it are <see cref="BrowserFactAttribute"/>s: skipped where there is no browser, except in CI.
/// </summary>
public sealed class BrowserSession : IAsyncDisposable
{
    private IPlaywright? _playwright;
    private IBrowser? _browser;

    public IBrowserContext Context { get; private set; } = null!;
    /// <summary>Browser console lines and failed requests, for failure messages.</summary>
    public List<string> ConsoleLog { get; } = [];
    public IPage Page { get; private set; } = null!;
    public string ScreenshotDirectory { get; } = Path.Combine(AppContext.BaseDirectory, "screenshots");

    public static async Task<BrowserSession> StartAsync(Uri baseAddress, string locale = "zh-TW")
    {
        string chromium = Chromium.Path ?? throw new InvalidOperationException(Chromium.Missing);
        Environment.SetEnvironmentVariable("PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD", "1");
        var session = new BrowserSession();
        session._playwright = await Playwright.CreateAsync();
        session._browser = await session._playwright.Chromium.LaunchAsync(new BrowserTypeLaunchOptions
        {
            ExecutablePath = chromium,
            Headless = true,
            Args = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"],
        });
        session.Context = await session._browser.NewContextAsync(new BrowserNewContextOptions
        {
            BaseURL = baseAddress.ToString(),
            Locale = locale,
            ExtraHTTPHeaders = new Dictionary<string, string> { ["Accept-Language"] = locale },
            ViewportSize = new ViewportSize { Width = 1280, Height = 900 },
            AcceptDownloads = true,
        });
        session.Context.SetDefaultTimeout(20_000);
        session.Page = await session.Context.NewPageAsync();
        session.Page.Console += (_, message) => session.ConsoleLog.Add($"{message.Type}: {message.Text}");
        session.Page.RequestFailed += (_, request) => session.ConsoleLog.Add($"request failed: {request.Url} {request.Failure}");
        Directory.CreateDirectory(session.ScreenshotDirectory);
        return session;
    }

    /// <summary>Opens a page and waits until the Blazor circuit is interactive.</summary>
    public async Task GotoAsync(string path)
    {
        await Page.GotoAsync(path);
        try
        {
            await Page.Locator("[data-testid=interactive]").WaitForAsync(new LocatorWaitForOptions { State = WaitForSelectorState.Attached });
        }
        catch (TimeoutException e)
        {
            throw new TimeoutException($"The page never became interactive. Browser log:\n{string.Join("\n", ConsoleLog)}", e);
        }
    }

    /// <summary>
    /// The whole page, from the top: the app bar is fixed, so a page left scrolled (a click further down) showed it in the
    /// middle of a full-page capture, over the fields there (docs/screenshots/en-3-settings.png had it over the learning rate).
    /// </summary>
    public async Task ScreenshotAsync(string name)
    {
        await Page.EvaluateAsync("() => window.scrollTo(0, 0)");
        await Page.ScreenshotAsync(new PageScreenshotOptions { Path = Path.Combine(ScreenshotDirectory, name + ".png"), FullPage = true });
    }

    /// <summary>
    /// Acts, then expects its result; when the result does not come, acts again (three times at most), as a person does
    /// when a click or an upload was lost. Right after a step change or a reload, Blazor can re-render an input while the
    /// action lands on it (seen twice in CI's full run on a loaded 2-core machine: a file set on the data step and a value
    /// typed after the language switch were both lost). The expectation is the same each time; only the action repeats.
    /// </summary>
    public static async Task ActUntilAsync(Func<Task> act, Func<float, Task> expect, float timeoutMs = 15_000, int attempts = 3)
    {
        for (int attempt = 1; ; attempt++)
        {
            await act();
            try
            {
                await expect(timeoutMs);
                return;
            }
            catch (PlaywrightException) when (attempt < attempts) { }
        }
    }

    /// <summary>Picks an item of a MudSelect by its visible text.</summary>
    public async Task SelectAsync(string testId, string itemText)
    {
        await Page.Locator($"[data-testid={testId}]").ClickAsync();
        await Page.Locator(".mud-popover-open .mud-list-item").Filter(new LocatorFilterOptions { HasText = itemText }).First.ClickAsync();
    }

    /// <summary>Keeps what the page showed when a test failed: failure-&lt;name&gt;.png and .html next to the screenshots.</summary>
    public async Task RecordFailureAsync(string name)
    {
        try
        {
            await ScreenshotAsync("failure-" + name);
            await File.WriteAllTextAsync(Path.Combine(ScreenshotDirectory, $"failure-{name}.html"), await Page.ContentAsync());
        }
        catch (PlaywrightException)
        {
            // the page may be gone; the original failure matters more
        }
    }

    public async ValueTask DisposeAsync()
    {
        if (_browser is not null) await _browser.DisposeAsync();
        _playwright?.Dispose();
    }
}
