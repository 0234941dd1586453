namespace FineTune.Tests.Adapters;

/// <summary>Finds files of the repository from the test's output folder (goldens, fixtures, samples).</summary>
internal static class TestPaths
{
    public static string RepoRoot
    {
        get
        {
            var dir = new DirectoryInfo(AppContext.BaseDirectory);
            while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "FineTune.sln"))) dir = dir.Parent;
            return dir?.FullName ?? throw new DirectoryNotFoundException("FineTune.sln was not found above " + AppContext.BaseDirectory);
        }
    }

    public static string InRepo(params string[] parts) => Path.Combine([RepoRoot, .. parts]);

    public static string NewTempFolder(string prefix)
    {
        string path = Path.Combine(Path.GetTempPath(), $"{prefix}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(path);
        return path;
    }
}
