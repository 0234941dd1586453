namespace FineTune.Web;

/// <summary>
/// Commands that run without the web server, for automation and containers: `train`, `generate`, `export-gguf` and
/// `healthcheck` (see README and <see cref="Headless.HeadlessCli"/>; `--help` lists them, `&lt;command&gt; --help` their options).
/// </summary>
public static class HeadlessCommands
{
    public static bool TryRun(string[] args, out int exitCode)
    {
        exitCode = 0;
        if (!Headless.HeadlessCli.IsCommandLine(args)) return false;
        exitCode = Headless.HeadlessCli.RunAsync(args, Headless.HeadlessConsole.Process, Headless.CancelOnCtrlC.Token).GetAwaiter().GetResult();
        return true;
    }
}
