using FineTune.Web.Infrastructure;

namespace FineTune.Web.Features.Models;

public enum LocalFolderProblem { None, Empty, OutsideRoots, NotFound, NoConfig, NoWeights }

/// <summary>
/// Local model folders. On localhost the user in the browser is the user at the machine: any readable folder is a
/// model folder. When the app is reachable from the network (token mode) the path comes from a remote browser and the
/// server must not become a way to read any folder on the machine: only folders under the roots (FineTune:ModelRoots
/// plus data/models) open.
/// </summary>
/// <param name="rootsEnforced">Whether the roots apply now (the web app: listening beyond loopback); null: always.</param>
public sealed class LocalModelFolders(DataPaths paths, Func<bool>? rootsEnforced = null)
{
    public IReadOnlyList<string> Roots => paths.ModelRoots;

    /// <summary>True when only folders under <see cref="Roots"/> may be opened.</summary>
    public bool RootsEnforced => rootsEnforced?.Invoke() ?? true;

    public (string? FullPath, LocalFolderProblem Problem) Check(string? folder)
    {
        if (string.IsNullOrWhiteSpace(folder)) return (null, LocalFolderProblem.Empty);
        string full;
        try { full = Path.GetFullPath(folder.Trim(), paths.Models); }
        catch (Exception e) when (e is ArgumentException or NotSupportedException or PathTooLongException) { return (null, LocalFolderProblem.NotFound); }

        bool enforced = RootsEnforced;
        if (enforced && !Roots.Any(root => IsUnder(full, root))) return (full, LocalFolderProblem.OutsideRoots);
        if (!Directory.Exists(full)) return (full, LocalFolderProblem.NotFound);
        // Resolve links: a symlink inside a root must not lead outside it.
        var info = new DirectoryInfo(full);
        if (enforced && info.LinkTarget is not null && info.ResolveLinkTarget(returnFinalTarget: true) is { } target && !Roots.Any(root => IsUnder(target.FullName, root)))
            return (full, LocalFolderProblem.OutsideRoots);
        if (!File.Exists(Path.Combine(full, "config.json"))) return (full, LocalFolderProblem.NoConfig);
        if (!Directory.EnumerateFiles(full, "*.safetensors").Any()) return (full, LocalFolderProblem.NoWeights);
        return (full, LocalFolderProblem.None);
    }

    /// <summary>Model folders found directly under the roots (for a pick list).</summary>
    public IReadOnlyList<string> List() =>
        Roots.Where(Directory.Exists)
            .SelectMany(root => Directory.EnumerateDirectories(root))
            .Where(d => File.Exists(Path.Combine(d, "config.json")))
            .OrderBy(d => d, StringComparer.Ordinal)
            .ToArray();

    internal static bool IsUnder(string path, string root)
    {
        string p = Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        string r = Path.TrimEndingDirectorySeparator(Path.GetFullPath(root));
        return p.Equals(r, StringComparison.Ordinal) || p.StartsWith(r + Path.DirectorySeparatorChar, StringComparison.Ordinal);
    }
}
