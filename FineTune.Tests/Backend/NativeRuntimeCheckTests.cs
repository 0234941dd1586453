using System.Net;
using System.Text;
using System.Text.Json;
using FineTune.Engine.Backend;
using FineTune.Tests.Adapters;
using FineTune.Tests.Models;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.DependencyInjection.Extensions;
using TorchSharp;

namespace FineTune.Tests.Backend;

/// <summary>
/// Where TorchSharp's native library cannot load (Debian 12, Ubuntu 22.04: C++ runtime older than GCC 13), the app says
/// so in one line, keeps serving the wizard with training off, and reports it on /healthz; the CLI exits with that line.
/// </summary>
public class NativeRuntimeCheckTests
{
    [Fact]
    public void A_cpp_runtime_without_GLIBCXX_3_4_32_is_named_with_what_to_run_instead()
    {
        string folder = TestPaths.NewTempFolder("libstdcxx");
        try
        {
            // Version names are plain strings in the ELF file; a Debian 12 libstdc++ stops at GLIBCXX_3.4.30.
            string old = Path.Combine(folder, "libstdc++.so.6.0.30");
            File.WriteAllBytes(old, [.. Encoding.ASCII.GetBytes("\x7fELF...GLIBCXX_3.4.29\0GLIBCXX_3.4.30\0..."), .. new byte[3 << 20]]);
            // The new version name straddles the 1 MiB read buffer's edge: found all the same.
            string current = Path.Combine(folder, "libstdc++.so.6.0.33");
            var bytes = new byte[(1 << 20) + 64];
            Encoding.ASCII.GetBytes("GLIBCXX_3.4.32").CopyTo(bytes, (1 << 20) - 5);
            File.WriteAllBytes(current, bytes);

            string? problem = NativeRuntimeCheck.ProblemWith(old);

            Assert.NotNull(problem);
            Assert.DoesNotContain('\n', problem);
            Assert.Contains("GLIBCXX_3.4.32", problem);
            Assert.Contains(old, problem);
            Assert.Contains("tools/debian13", problem);
            Assert.Contains("Docker", problem);
            Assert.Null(NativeRuntimeCheck.ProblemWith(current));
        }
        finally { Directory.Delete(folder, recursive: true); }
    }

    [Fact]
    public void This_test_process_has_a_runtime_that_loads_TorchSharp()
    {
        // The tests run where TorchSharp loads (tools/debian13 on Debian 12): the check must not cry wolf there.
        _ = ComputeBackend.Current;
        Assert.Null(NativeRuntimeCheck.Problem());
        Assert.True(ComputeBackend.Current.CanCompute);
    }

    [Fact]
    public void TorchSharps_loader_trace_becomes_one_line()
    {
        var trace = new NotSupportedException(
            "This application or script uses TorchSharp but doesn't contain a reference to libtorch-cpu-linux-x64, Version=2.10.0.0.\n\n" +
            "Consider referencing one of the combination packages TorchSharp-cpu...\n\nTrace from LoadNativeBackend:\n\n    Step 1 - ...");
        var failure = new TypeInitializationException("TorchSharp.torch", trace);

        Assert.True(NativeRuntimeCheck.IsNativeLoadFailure(failure));
        string line = NativeRuntimeCheck.LoadFailureLine(failure);

        Assert.DoesNotContain('\n', line);
        Assert.DoesNotContain("Trace from LoadNativeBackend", line);
        Assert.Contains("doesn't contain a reference to libtorch-cpu-linux-x64", line);
        Assert.Contains("tools/debian13", line);
        Assert.False(NativeRuntimeCheck.IsNativeLoadFailure(new InvalidOperationException("something else")));
    }

    private static BackendInfo Unavailable() =>
        new(DeviceType.CPU, "No compute backend", "Training is off: test reason", "none") { UnavailableReason = "Training is off: test reason. Run the app through tools/debian13." };

    [Fact]
    public async Task The_app_serves_the_wizard_with_training_off_and_healthz_says_why()
    {
        using var app = new WebAppHost(services => services.Replace(ServiceDescriptor.Singleton(Unavailable())));

        var health = JsonDocument.Parse(await app.Client.GetStringAsync("/healthz")).RootElement;
        Assert.Equal("degraded", health.GetProperty("status").GetString());
        Assert.False(health.GetProperty("backend").GetProperty("canTrain").GetBoolean());
        Assert.StartsWith("Training is off", health.GetProperty("backend").GetProperty("unavailableReason").GetString());

        foreach (string page in new[] { "/", "/history" })
        {
            var response = await app.Client.GetAsync(page);
            Assert.Equal(HttpStatusCode.OK, response.StatusCode);
            string html = await response.Content.ReadAsStringAsync();
            Assert.Contains("data-testid=\"compute-unavailable\"", html);
            Assert.Contains("Training is off: test reason", html);
            // The engine's English reason sits behind a details toggle; the banner itself speaks the page's language.
            Assert.Matches("<details[^>]*compute-unavailable-details[\\s\\S]*Training is off: test reason[\\s\\S]*</details>", html);
        }
    }

    [Fact]
    public async Task The_app_on_a_working_backend_shows_no_warning()
    {
        using var app = new WebAppHost();
        string html = await app.Client.GetStringAsync("/");
        Assert.DoesNotContain("compute-unavailable", html);
        var health = JsonDocument.Parse(await app.Client.GetStringAsync("/healthz")).RootElement;
        Assert.Equal("ok", health.GetProperty("status").GetString());
        Assert.True(health.GetProperty("backend").GetProperty("canTrain").GetBoolean());
    }

    [Fact]
    [Trait(Category.Name, Category.Slow)]
    public async Task The_train_command_exits_with_one_line_when_libtorch_cannot_load()
    {
        // A real load failure in a child process (libtorch loads once per process, and this one has it already):
        // FINETUNE_LIBTORCH names a folder whose libc10.so is not a library. The command line itself is good (a usage
        // error is answered before libtorch is tried: HeadlessCliTests).
        string folder = TestPaths.NewTempFolder("broken-libtorch");
        try
        {
            File.WriteAllText(Path.Combine(folder, "libc10.so"), "not an ELF file");
            var (code, stdout, stderr) = await WebAppProcess.RunCommandAsync(
                ["train", "--model", ModelFixtures.Folder("qwen2"), "--data", TestPaths.InRepo("samples", "tutorial-qa.csv"), "--output", Path.Combine(folder, "a.zip")],
                new Dictionary<string, string> { [ComputeBackend.LibTorchVariable] = folder });

            Assert.Equal(1, code);
            string[] lines = stderr.Split('\n', StringSplitOptions.RemoveEmptyEntries);
            Assert.Single(lines);
            Assert.StartsWith("train: Training is off: libtorch could not be loaded (", lines[0]);
            Assert.Contains("libc10.so", lines[0]);
            Assert.Contains("tools/debian13", lines[0]);
            Assert.DoesNotContain("LoadNativeBackend", stdout + stderr);
            Assert.False(File.Exists(Path.Combine(folder, "a.zip")));
        }
        finally { Directory.Delete(folder, recursive: true); }
    }
}
