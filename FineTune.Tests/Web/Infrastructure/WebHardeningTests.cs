using System.Collections.Concurrent;
using System.Net;
using System.Text.RegularExpressions;
using FineTune.Tests.Web.Support;
using FineTune.Web.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace FineTune.Tests.Web.Infrastructure;

/// <summary>Issue 18, findings 6, 9 and 10 over HTTP against the real app.</summary>
public partial class WebHardeningTests
{
    private const string Token = "open-sesame-42";

    private sealed class CapturedLogs : ILoggerProvider
    {
        public ConcurrentQueue<string> Lines { get; } = new();
        public ILogger CreateLogger(string categoryName) => new Logger(this, categoryName);
        public void Dispose() { }

        private sealed class Logger(CapturedLogs owner, string category) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
            public bool IsEnabled(LogLevel logLevel) => true;
            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter) =>
                owner.Lines.Enqueue($"{logLevel} {category}: {formatter(state, exception)} {exception}");
        }
    }

    private static WebAppHost ExposedApp(CapturedLogs? logs = null) =>
        new(services => { if (logs is not null) services.AddSingleton<ILoggerProvider>(logs); },
            new Dictionary<string, string?> { ["FineTune:AccessToken"] = Token }, urls: "http://0.0.0.0:0");

    private static async Task<string> AntiforgeryTokenAsync(HttpClient client)
    {
        string page = await (await client.GetAsync("/login")).Content.ReadAsStringAsync();
        return RequestToken().Match(page).Groups[1].Value;
    }

    private static FormUrlEncodedContent LoginForm(string token, string antiforgery, string returnUrl = "/history") =>
        new(new Dictionary<string, string> { ["token"] = token, ["returnUrl"] = returnUrl, ["__RequestVerificationToken"] = antiforgery });

    [Fact]
    public async Task Login_needs_the_forms_antiforgery_token_and_logs_failures_without_the_token()
    {
        var logs = new CapturedLogs();
        using var app = ExposedApp(logs);
        // Without the form's token (a cross-site post): refused. Before: accepted (DisableAntiforgery).
        var forged = await app.Client.PostAsync("/auth/login", new FormUrlEncodedContent(new Dictionary<string, string> { ["token"] = Token, ["returnUrl"] = "/" }));
        Assert.Equal(HttpStatusCode.BadRequest, forged.StatusCode);

        string antiforgery = await AntiforgeryTokenAsync(app.Client);
        Assert.NotEmpty(antiforgery);
        var wrong = await app.Client.PostAsync("/auth/login", LoginForm("guess-123-secret", antiforgery));
        Assert.StartsWith("/login?failed=1", wrong.Headers.Location?.OriginalString);
        Assert.Contains(logs.Lines, l => l.Contains("Failed sign-in from", StringComparison.Ordinal));
        Assert.DoesNotContain(logs.Lines, l => l.Contains("guess-123-secret", StringComparison.Ordinal));

        var right = await app.Client.PostAsync("/auth/login", LoginForm(Token, antiforgery));
        Assert.Equal("/history", right.Headers.Location?.OriginalString);
        Assert.Equal(HttpStatusCode.OK, (await app.Client.GetAsync("/history")).StatusCode);
    }

    [Fact]
    public async Task Guessing_the_token_is_rate_limited()
    {
        using var app = ExposedApp();
        string antiforgery = await AntiforgeryTokenAsync(app.Client);
        var codes = new List<HttpStatusCode>();
        for (int i = 0; i < AccessGate.LoginAttemptsPerMinute + 5; i++)
            codes.Add((await app.Client.PostAsync("/auth/login", LoginForm($"guess-{i}", antiforgery))).StatusCode);
        // Before: 200 wrong tokens in 1.4 s, every one answered.
        Assert.All(codes.Take(AccessGate.LoginAttemptsPerMinute), c => Assert.Equal(HttpStatusCode.Redirect, c));
        Assert.All(codes.Skip(AccessGate.LoginAttemptsPerMinute), c => Assert.Equal(HttpStatusCode.TooManyRequests, c));
        // Even the right token waits out the minute.
        Assert.Equal(HttpStatusCode.TooManyRequests, (await app.Client.PostAsync("/auth/login", LoginForm(Token, antiforgery))).StatusCode);
    }

    [Fact]
    public async Task A_token_in_a_url_never_travels_on_in_the_return_url()
    {
        using var app = ExposedApp();
        var page = await app.Client.GetAsync("/history?token=open-sesame-42&x=1");
        Assert.Equal(HttpStatusCode.Redirect, page.StatusCode);
        Assert.Equal("/login?returnUrl=%2Fhistory%3Fx%3D1", page.Headers.Location?.OriginalString);
        string antiforgery = await AntiforgeryTokenAsync(app.Client);
        var wrong = await app.Client.PostAsync("/auth/login", LoginForm("guess", antiforgery, "/history?access_token=abc"));
        Assert.Equal("/login?failed=1&returnUrl=%2Fhistory", wrong.Headers.Location?.OriginalString);
        Assert.Equal("/x?a=1", AccessGate.SafeReturnUrl("/x?Token=s&a=1"));
    }

    [Fact]
    public async Task Odd_requests_are_answered_not_500()
    {
        using var app = ExposedApp();
        // Before: 500 (Results.LocalRedirect refused what IsLocal let through; ReadFormAsync without a form body).
        var culture = await app.Client.GetAsync("/culture?name=en&returnUrl=/%09/evil.example");
        Assert.Equal(HttpStatusCode.Redirect, culture.StatusCode);
        Assert.Equal("/", culture.Headers.Location?.OriginalString);
        Assert.Equal(HttpStatusCode.BadRequest, (await app.Client.PostAsync("/auth/login", null)).StatusCode);
        Assert.Equal(HttpStatusCode.BadRequest, (await app.Client.PostAsync("/auth/login", new StringContent("{}", System.Text.Encoding.UTF8, "application/json"))).StatusCode);
    }

    [Fact]
    public async Task An_unusable_data_folder_is_a_page_that_says_so_not_an_abort()
    {
        // A file where the data folder should be: creating it fails like a read-only or full disk does.
        string blocker = Path.GetTempFileName();
        try
        {
            var logs = new CapturedLogs();
            // Before: the host's start threw (rc 134 with a stack trace).
            using var app = new WebAppHost(services => services.AddSingleton<ILoggerProvider>(logs), new Dictionary<string, string?> { ["FineTune:DataDirectory"] = blocker });
            var page = await app.Client.GetAsync("/");
            Assert.Equal(HttpStatusCode.ServiceUnavailable, page.StatusCode);
            string html = await page.Content.ReadAsStringAsync();
            Assert.Contains("data-folder-problem", html);
            Assert.Contains(WebUtility.HtmlEncode(blocker), html);
            var health = await app.Client.GetAsync("/healthz"); // answered, and unhealthy: the data folder is not writable
            Assert.Equal(HttpStatusCode.ServiceUnavailable, health.StatusCode);
            Assert.Contains("\"status\"", await health.Content.ReadAsStringAsync());
            var critical = Assert.Single(logs.Lines, l => l.StartsWith("Critical", StringComparison.Ordinal));
            Assert.DoesNotContain("   at ", critical); // one line, no stack trace
        }
        finally
        {
            File.Delete(blocker);
        }
    }

    [FineTune.Tests.Support.TinyDiskFact]
    public async Task Starting_on_a_full_disk_serves_the_page_that_says_so()
    {
        using var disk = new FineTune.Tests.Support.TinyDisk(1 << 20);
        disk.Fill();
        // Before: restarted on a full disk, the app aborted (rc 134).
        using var app = new WebAppHost(settings: new Dictionary<string, string?> { ["FineTune:DataDirectory"] = Path.Combine(disk.Folder, "data") });
        var page = await app.Client.GetAsync("/history");
        Assert.Equal(HttpStatusCode.ServiceUnavailable, page.StatusCode);
        Assert.Contains("data-folder-problem", await page.Content.ReadAsStringAsync());
    }

    [Fact]
    public async Task Sql_commands_are_not_logged_and_keys_live_in_the_data_folder()
    {
        using var app = new WebAppHost();
        var loggers = app.Services.GetRequiredService<ILoggerFactory>();
        // Before: every SQL command at Information (1,770 lines in one run).
        Assert.False(loggers.CreateLogger("Microsoft.EntityFrameworkCore.Database.Command").IsEnabled(LogLevel.Information));
        Assert.True(loggers.CreateLogger("Microsoft.EntityFrameworkCore.Database.Command").IsEnabled(LogLevel.Warning));

        await app.Client.GetAsync("/"); // renders an antiforgery token: creates the data-protection key
        // Before: ~/.aspnet/DataProtection-Keys, outside the data folder.
        Assert.NotEmpty(Directory.GetFiles(Path.Combine(app.DataDirectory, "keys"), "key-*.xml"));
    }

    [GeneratedRegex("name=\"__RequestVerificationToken\"[^>]*value=\"([^\"]+)\"")]
    private static partial Regex RequestToken();
}
