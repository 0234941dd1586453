using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text;
using FineTune.Tests.Adapters;

namespace FineTune.Tests.Web.Support;

/// <summary>
/// The web app's own `dotnet build` output (FineTune.Web/bin/&lt;Configuration&gt;/&lt;tfm&gt;) run as a child process on
/// 127.0.0.1 with its working directory in an empty temp folder and its data folder inside it: what a user gets from
/// `dotnet build` and `dotnet FineTune.Web.dll`, and a process whose resident memory is the app's alone; or one of its
/// headless commands (<see cref="RunCommandAsync"/>).
/// </summary>
public sealed class WebAppProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly StringBuilder _output = new();

    public string WorkingDirectory { get; }
    public HttpClient Client { get; }
    public Uri BaseAddress => Client.BaseAddress!;
    public int ProcessId => _process.Id;

    private WebAppProcess(Process process, string workingDirectory, int port)
    {
        _process = process;
        WorkingDirectory = workingDirectory;
        Client = new HttpClient { BaseAddress = new Uri($"http://127.0.0.1:{port}/"), Timeout = TimeSpan.FromSeconds(60) };
    }

    /// <summary>Starts the app; <paramref name="environment"/> adds variables (FineTune__ModelRoots__0, DOTNET_gcServer, ...).</summary>
    public static WebAppProcess Start(IDictionary<string, string>? environment = null)
    {
        string workingDirectory = TestPaths.NewTempFolder("finetune-cwd");
        int port = FreePort();
        var start = new ProcessStartInfo(DotnetHost(), [BuildOutput(), "--urls", $"http://127.0.0.1:{port}"])
        {
            WorkingDirectory = workingDirectory,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.Environment["ASPNETCORE_ENVIRONMENT"] = "Production";
        start.Environment["DOTNET_ENVIRONMENT"] = "Production";
        start.Environment["FineTune__DataDirectory"] = Path.Combine(workingDirectory, "data");
        foreach (var (key, value) in environment ?? new Dictionary<string, string>())
            start.Environment[key] = value;
        var app = new WebAppProcess(Process.Start(start)!, workingDirectory, port);
        app._process.OutputDataReceived += (_, e) => app.Append(e.Data);
        app._process.ErrorDataReceived += (_, e) => app.Append(e.Data);
        app._process.BeginOutputReadLine();
        app._process.BeginErrorReadLine();
        return app;
    }

    /// <summary>
    /// A headless command (`dotnet FineTune.Web.dll train …`) in a process of its own, run to its end: what a user's shell
    /// sees, in a process where libtorch is not loaded yet (in the test process an earlier test may have loaded it).
    /// <paramref name="environment"/> adds variables (FINETUNE_LIBTORCH, ...).
    /// </summary>
    public static async Task<(int Code, string Out, string Err)> RunCommandAsync(IReadOnlyList<string> args, IDictionary<string, string>? environment = null)
    {
        string workingDirectory = TestPaths.NewTempFolder("finetune-command");
        try
        {
            var start = new ProcessStartInfo(DotnetHost(), [BuildOutput(), .. args])
            {
                WorkingDirectory = workingDirectory,
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            foreach (var (key, value) in environment ?? new Dictionary<string, string>())
                start.Environment[key] = value;
            using var process = Process.Start(start)!;
            var output = process.StandardOutput.ReadToEndAsync();
            var error = process.StandardError.ReadToEndAsync();
            using var timeout = new CancellationTokenSource(TimeSpan.FromMinutes(2));
            try
            {
                await process.WaitForExitAsync(timeout.Token);
            }
            catch (OperationCanceledException)
            {
                process.Kill(entireProcessTree: true);
                throw new TimeoutException($"'{string.Join(' ', args)}' did not end within two minutes:\n{await error}");
            }
            return (process.ExitCode, await output, await error);
        }
        finally
        {
            try { Directory.Delete(workingDirectory, recursive: true); } catch (IOException) { /* best effort */ }
        }
    }

    /// <summary>GET / until the app answers (start-up loads libtorch and migrates the database), at most two minutes.</summary>
    public async Task<HttpResponseMessage> FirstPageAsync()
    {
        var deadline = DateTime.UtcNow.AddMinutes(2);
        while (true)
        {
            if (_process.HasExited) throw new InvalidOperationException($"The app exited with {_process.ExitCode}:\n{OutputTail()}");
            try
            {
                return await Client.GetAsync("/");
            }
            catch (HttpRequestException) when (DateTime.UtcNow < deadline)
            {
                await Task.Delay(250);
            }
        }
    }

    /// <summary>The app's resident memory (VmRSS of /proc/&lt;pid&gt;/status).</summary>
    public long ResidentBytes() => FineTune.Engine.Backend.HostMemory.ResidentBytes(_process.Id);

    /// <summary>The last lines the app wrote (stdout and stderr), for failure messages.</summary>
    public string OutputTail(int characters = 4000)
    {
        lock (_output) return _output.Length <= characters ? _output.ToString() : _output.ToString(_output.Length - characters, characters);
    }

    private void Append(string? line)
    {
        lock (_output) _output.AppendLine(line);
    }

    public async ValueTask DisposeAsync()
    {
        Client.Dispose();
        if (!_process.HasExited) _process.Kill(entireProcessTree: true);
        await _process.WaitForExitAsync();
        _process.Dispose();
        try { Directory.Delete(WorkingDirectory, recursive: true); } catch (IOException) { /* best effort */ }
    }

    /// <summary>FineTune.Web.dll of this test run's configuration (the test project builds it first).</summary>
    private static string BuildOutput()
    {
        var testOutput = new DirectoryInfo(AppContext.BaseDirectory.TrimEnd(Path.DirectorySeparatorChar)); // …/FineTune.Tests/bin/<Configuration>/<tfm>
        string dll = TestPaths.InRepo("FineTune.Web", "bin", testOutput.Parent!.Name, testOutput.Name, "FineTune.Web.dll");
        if (!File.Exists(dll)) throw new FileNotFoundException($"{dll} is missing: build FineTune.Web (building FineTune.Tests does).", dll);
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
}
