using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;
using FineTune.Tests.Adapters;
using FineTune.Tests.Support;

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
        string dll = WebBuildOutput();
        string elsewhere = TestPaths.NewTempFolder("finetune-cwd");
        int port = FreePort();
        var start = new ProcessStartInfo(DotnetHost(), [dll, "--urls", $"http://127.0.0.1:{port}"])
        {
            WorkingDirectory = elsewhere,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.Environment["ASPNETCORE_ENVIRONMENT"] = "Production";
        start.Environment["DOTNET_ENVIRONMENT"] = "Production";
        start.Environment["FineTune__DataDirectory"] = Path.Combine(elsewhere, "data");
        var output = new StringBuilder();
        using var app = Process.Start(start)!;
        app.OutputDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        app.ErrorDataReceived += (_, e) => { lock (output) output.AppendLine(e.Data); };
        app.BeginOutputReadLine();
        app.BeginErrorReadLine();
        try
        {
            using var client = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}/"), Timeout = TimeSpan.FromSeconds(30) };
            string page = await FirstPageAsync(client, app, output);
            Assert.Contains("data-testid=\"step-model\"", page, StringComparison.Ordinal); // the wizard rendered, not an error page

            // What the page links to (fingerprinted names from the static assets manifest) and the plain names.
            var linked = AssetReference().Matches(page).Select(m => m.Groups[1].Value).Where(u => !u.StartsWith("http", StringComparison.Ordinal)).ToList();
            Assert.Contains(linked, u => u.Contains("blazor.web", StringComparison.Ordinal));
            string[] plain = ["app.css", "_content/MudBlazor/MudBlazor.min.css", "_content/MudBlazor/MudBlazor.min.js", "_framework/blazor.web.js"];
            var failures = new List<string>();
            foreach (string url in linked.Concat(plain).Distinct())
            {
                using var response = await client.GetAsync(url);
                int length = (await response.Content.ReadAsByteArrayAsync()).Length;
                if (response.StatusCode != HttpStatusCode.OK || length == 0)
                    failures.Add($"{url}: {(int)response.StatusCode}, {length} bytes");
            }
            Assert.True(failures.Count == 0, $"Static assets not served: {string.Join(", ", failures)}\n{Tail(output)}");
        }
        finally
        {
            app.Kill(entireProcessTree: true);
            await app.WaitForExitAsync();
            try { Directory.Delete(elsewhere, recursive: true); } catch (IOException) { /* best effort */ }
        }
    }

    /// <summary>GET / until the app answers (start-up loads libtorch and migrates the database), at most two minutes.</summary>
    private static async Task<string> FirstPageAsync(HttpClient client, Process app, StringBuilder output)
    {
        var deadline = DateTime.UtcNow.AddMinutes(2);
        while (true)
        {
            Assert.False(app.HasExited, $"The app exited with {(app.HasExited ? app.ExitCode : 0)}:\n{Tail(output)}");
            try
            {
                using var response = await client.GetAsync("/");
                string body = await response.Content.ReadAsStringAsync();
                Assert.True(response.StatusCode == HttpStatusCode.OK, $"GET / → {(int)response.StatusCode}\n{Tail(output)}");
                return body;
            }
            catch (HttpRequestException) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(250);
            }
        }
    }

    /// <summary>The web app's own build output for this test run's configuration (the test project builds it first).</summary>
    private static string WebBuildOutput()
    {
        var testOutput = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)); // …/FineTune.Tests/bin/<Configuration>/<tfm>
        string dll = TestPaths.InRepo("FineTune.Web", "bin", testOutput.Parent!.Name, testOutput.Name, "FineTune.Web.dll");
        Assert.True(File.Exists(dll), $"{dll} is missing: build FineTune.Web (the test project does).");
        return dll;
    }

    private static string DotnetHost() =>
        Environment.ProcessPath is { } host && Path.GetFileNameWithoutExtension(host) == "dotnet" ? host : "dotnet";

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    private static string Tail(StringBuilder output)
    {
        lock (output) return output.Length <= 4000 ? output.ToString() : output.ToString(output.Length - 4000, 4000);
    }

    [GeneratedRegex("(?:href|src)=\"([^\"]+\\.(?:css|js))\"")]
    private static partial Regex AssetReference();
}
