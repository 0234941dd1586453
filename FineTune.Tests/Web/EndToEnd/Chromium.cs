using FineTune.Tests.Support;

namespace FineTune.Tests.Web.EndToEnd;

/// <summary>
/// Finds a Chromium (or Chrome) for the browser tests, in this order: FINETUNE_CHROMIUM; the distributions' paths
/// (Debian's /usr/bin/chromium, Ubuntu's chromium-browser, Google Chrome); the snap (Ubuntu 24.04's only Chromium);
/// Playwright's own install (`pwsh bin/Debug/net10.0/playwright.ps1 install chromium`, PLAYWRIGHT_BROWSERS_PATH or
/// its default cache); the usual Windows and macOS locations.
/// </summary>
public static class Chromium
{
    public const string Variable = "FINETUNE_CHROMIUM";

    /// <summary>The browser to drive, or null with <see cref="Missing"/> saying where none was found.</summary>
    public static string? Path { get; } = Find(out _missing);

    private static readonly string _missing;

    /// <summary>Why there is no browser and how to get one (null when there is one).</summary>
    public static string? Missing => Path is null ? _missing : null;

    /// <summary>
    /// CI (CI=true, as .ci/run's environment sets it) must run the browser tests: there a missing browser fails them.
    /// Elsewhere they are skipped with <see cref="Missing"/> as the reason.
    /// </summary>
    public static bool Required => ContinuousIntegration.Running;

    private static string? Find(out string missing)
    {
        if (Environment.GetEnvironmentVariable(Variable) is { } chosen)
        {
            missing = $"{Variable}={chosen} names no file; point it at a Chromium or Chrome executable, or unset it to search the usual places.";
            return File.Exists(chosen) ? chosen : null;
        }
        var candidates = new List<string>
        {
            "/usr/bin/chromium", "/usr/bin/chromium-browser", "/usr/lib/chromium/chromium",
            "/usr/bin/google-chrome", "/usr/bin/google-chrome-stable", "/snap/bin/chromium",
        };
        candidates.AddRange(PlaywrightBrowsers());
        candidates.AddRange(
        [
            @"C:\Program Files\Google\Chrome\Application\chrome.exe", @"C:\Program Files (x86)\Google\Chrome\Application\chrome.exe",
            "/Applications/Chromium.app/Contents/MacOS/Chromium", "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
        ]);
        missing = "No Chromium found (looked for " + Variable + ", /usr/bin/chromium, chromium-browser, google-chrome, /snap/bin/chromium, " +
                  "Playwright's browsers and the Windows/macOS install folders). Install one (Debian: apt-get install chromium fonts-noto-cjk; " +
                  "Ubuntu: snap install chromium; or `pwsh FineTune.Tests/bin/Debug/net10.0/playwright.ps1 install chromium`), set " + Variable +
                  ", or on Debian 12 run DEBIAN13_PACKAGES=\"chromium fonts-noto-cjk\" tools/debian13 dotnet test.";
        return candidates.FirstOrDefault(File.Exists);
    }

    /// <summary>Chromium builds that `playwright install chromium` put in PLAYWRIGHT_BROWSERS_PATH or its default cache, newest first.</summary>
    private static IEnumerable<string> PlaywrightBrowsers()
    {
        string home = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        string root = Environment.GetEnvironmentVariable("PLAYWRIGHT_BROWSERS_PATH") is { Length: > 0 } p && p != "0" ? p
            : OperatingSystem.IsWindows() ? System.IO.Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData), "ms-playwright")
            : OperatingSystem.IsMacOS() ? System.IO.Path.Combine(home, "Library", "Caches", "ms-playwright")
            : System.IO.Path.Combine(Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } x ? x : System.IO.Path.Combine(home, ".cache"), "ms-playwright");
        if (!Directory.Exists(root)) yield break;
        foreach (string build in Directory.GetDirectories(root, "chromium-*").OrderByDescending(d => d, StringComparer.Ordinal))
        {
            foreach (string executable in new[]
            {
                System.IO.Path.Combine(build, "chrome-linux", "chrome"), System.IO.Path.Combine(build, "chrome-linux64", "chrome"),
                System.IO.Path.Combine(build, "chrome-win", "chrome.exe"), System.IO.Path.Combine(build, "chrome-win64", "chrome.exe"),
                System.IO.Path.Combine(build, "chrome-mac", "Chromium.app", "Contents", "MacOS", "Chromium"),
                System.IO.Path.Combine(build, "chrome-mac-arm64", "Google Chrome for Testing.app", "Contents", "MacOS", "Google Chrome for Testing"),
            })
                yield return executable;
        }
    }
}

/// <summary>
/// A browser test: skipped with the reason when no Chromium is found (<see cref="Chromium.Missing"/>), except in CI
/// (CI=true), where the browser is installed by .ci/run and its absence must fail the test, not hide it.
/// </summary>
public sealed class BrowserFactAttribute : FactAttribute
{
    public BrowserFactAttribute()
    {
        if (Chromium.Path is null && !Chromium.Required) Skip = Chromium.Missing;
    }
}
