using System.Net;
using System.Text.RegularExpressions;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;

namespace FineTune.Tests.Web.Infrastructure;

/// <summary>
/// Issue 18, finding 9: the app as `dotnet build` leaves it (FineTune.Web/bin/…, not a publish), started with the
/// working directory somewhere else, served no static asset: a 500 (FileNotFoundException under wwwroot/_content) when
/// the issue was filed, a 200 with an empty body (Content-Length: 0) on main just before the fix. The framework and package
/// files are found only through the build's static web assets manifest, which only Development loaded by itself.
/// Runs the real build output in a child process from an empty temp folder.
/// </summary>
[Trait(Category.Name, Category.Slow)]
public sealed partial class BuildOutputStartTests
{
    [Fact]
    public async Task Build_output_started_outside_the_project_folder_serves_its_page_and_static_assets()
    {
        await using var app = WebAppProcess.Start();
        using var first = await app.FirstPageAsync();
        string page = await first.Content.ReadAsStringAsync();
        Assert.True(first.StatusCode == HttpStatusCode.OK, $"GET / → {(int)first.StatusCode}\n{app.OutputTail()}");
        Assert.Contains("data-testid=\"step-model\"", page, StringComparison.Ordinal); // the wizard rendered, not an error page

        // What the page links to (fingerprinted names from the static assets manifest) and the plain names.
        var linked = AssetReference().Matches(page).Select(m => m.Groups[1].Value).Where(u => !u.StartsWith("http", StringComparison.Ordinal)).ToList();
        Assert.Contains(linked, u => u.Contains("blazor.web", StringComparison.Ordinal));
        string[] plain = ["app.css", "_content/MudBlazor/MudBlazor.min.css", "_content/MudBlazor/MudBlazor.min.js", "_framework/blazor.web.js"];
        var failures = new List<string>();
        foreach (string url in linked.Concat(plain).Distinct())
        {
            using var response = await app.Client.GetAsync(url);
            int length = (await response.Content.ReadAsByteArrayAsync()).Length;
            if (response.StatusCode != HttpStatusCode.OK || length == 0)
                failures.Add($"{url}: {(int)response.StatusCode}, {length} bytes");
        }
        Assert.True(failures.Count == 0, $"Static assets not served: {string.Join(", ", failures)}\n{app.OutputTail()}");
    }

    [GeneratedRegex("(?:href|src)=\"([^\"]+\\.(?:css|js))\"")]
    private static partial Regex AssetReference();
}
