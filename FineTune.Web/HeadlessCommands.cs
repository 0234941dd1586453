namespace FineTune.Web;

/// <summary>Commands that run without the web server: `generate` and `train` (see README).</summary>
public static class HeadlessCommands
{
    public static bool TryRun(string[] args, out int exitCode)
    {
        exitCode = 0;
        return false;
    }
}
