namespace FineTune.Engine.Hub;

/// <summary>
/// Where Python's huggingface_hub keeps its cache and token (huggingface_hub/constants.py), so both share them:
/// HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else &lt;HF_HOME&gt;/hub; HF_HOME defaults to $XDG_CACHE_HOME/huggingface,
/// else ~/.cache/huggingface (on Windows too, under the user profile). The token: HF_TOKEN (or HUGGING_FACE_HUB_TOKEN),
/// else the file HF_TOKEN_PATH, else &lt;HF_HOME&gt;/token, the one <c>hf auth login</c> writes.
/// </summary>
public static class HubPaths
{
    /// <summary>Reads an environment variable; tests pass their own.</summary>
    public delegate string? Environment(string name);

    private static readonly Environment Process = System.Environment.GetEnvironmentVariable;

    public static string Home(Environment? env = null)
    {
        env ??= Process;
        return Expand(Set(env("HF_HOME"))
            ?? Path.Combine(Set(env("XDG_CACHE_HOME")) ?? Path.Combine(UserHome(), ".cache"), "huggingface"));
    }

    public static string CacheFolder(Environment? env = null)
    {
        env ??= Process;
        return Expand(Set(env("HF_HUB_CACHE")) ?? Set(env("HUGGINGFACE_HUB_CACHE")) ?? Path.Combine(Home(env), "hub"));
    }

    public static string TokenFile(Environment? env = null)
    {
        env ??= Process;
        return Expand(Set(env("HF_TOKEN_PATH")) ?? Path.Combine(Home(env), "token"));
    }

    /// <summary>The token huggingface_hub would send, or null when none is set (blank values and files count as none).</summary>
    public static string? FindToken(Environment? env = null)
    {
        env ??= Process;
        if ((Set(env("HF_TOKEN")?.Trim()) ?? Set(env("HUGGING_FACE_HUB_TOKEN")?.Trim())) is { } token) return token;
        string file = TokenFile(env);
        try
        {
            return File.Exists(file) ? Set(File.ReadAllText(file).Trim()) : null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return null; // an unreadable token file is as good as none; a gated model then says to set HF_TOKEN
        }
    }

    /// <summary>huggingface_hub's truth test for flags: 1, ON, YES or TRUE in any case.</summary>
    public static bool IsTrue(string name, Environment? env = null) =>
        (env ?? Process)(name)?.ToUpperInvariant() is "1" or "ON" or "YES" or "TRUE";

    private static string? Set(string? value) => string.IsNullOrEmpty(value) ? null : value;

    private static string UserHome() => System.Environment.GetFolderPath(System.Environment.SpecialFolder.UserProfile);

    /// <summary>~ and a leading ~/ as Python's os.path.expanduser reads them.</summary>
    private static string Expand(string path) =>
        path == "~" ? UserHome()
        : path.StartsWith("~/", StringComparison.Ordinal) || path.StartsWith("~\\", StringComparison.Ordinal) ? Path.Combine(UserHome(), path[2..])
        : path;
}
