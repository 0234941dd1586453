namespace FineTune.Web;

/// <summary>
/// Commands that run without the web server, for automation and containers:
/// `generate`, `train` and `export-gguf` (see README) and `healthcheck URL` (Docker HEALTHCHECK; the runtime image has no curl).
/// </summary>
public static class HeadlessCommands
{
    /// <summary>The commands that need libtorch (the others only read files or call HTTP).</summary>
    private static readonly HashSet<string> ComputingCommands = ["train", Headless.GenerateCommand.Name, Headless.ExportGgufCommand.Name];

    public static bool TryRun(string[] args, out int exitCode)
    {
        exitCode = 0;
        if (args.Length == 0) return false;
        if (ComputingCommands.Contains(args[0]) && !args.Contains("--help") && Engine.Backend.ComputeBackend.Initialize() is { CanCompute: false } backend)
        {
            // libtorch cannot load here: one line that says why and what to run instead, not a loader trace.
            Console.Error.WriteLine($"{args[0]}: {backend.UnavailableReason}");
            exitCode = 1;
            return true;
        }
        switch (args[0])
        {
            case Headless.GenerateCommand.Name: exitCode = Headless.GenerateCommand.Run(args[1..]); return true;
            case "train":
                exitCode = Headless.TrainCommand.Run(args, Console.Out, Console.Error, Headless.CancelOnCtrlC.Token);
                return true;
            case Headless.ExportGgufCommand.Name:
                exitCode = Headless.ExportGgufCommand.RunAsync(args[1..], Console.Out, Console.Error, Headless.CancelOnCtrlC.Token).GetAwaiter().GetResult();
                return true;
            case "healthcheck":
                exitCode = HealthCheck(args.Length > 1 ? args[1] : "http://127.0.0.1:8080/healthz");
                return true;
            default:
                return false;
        }
    }

    private static int HealthCheck(string url)
    {
        try
        {
            using var client = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
            using var response = client.GetAsync(url).GetAwaiter().GetResult();
            if (response.IsSuccessStatusCode) return 0;
            Console.Error.WriteLine($"healthcheck: {url} answered {(int)response.StatusCode}");
            return 1;
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or UriFormatException)
        {
            Console.Error.WriteLine($"healthcheck: {url} is not reachable: {e.Message}");
            return 1;
        }
    }
}
