using FineTune.Engine.Hub;
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
        // Compare real paths: a symlink at any level (models/linkdir/m, linkdir → /etc) must not lead outside the roots,
        // whose own real paths count (a root may itself be a link).
        if (enforced && !Roots.Any(root => IsUnder(RealPath(full), RealPath(root)))) return (full, LocalFolderProblem.OutsideRoots);
        if (!ModelReference.IsModelFolder(full)) return (full, LocalFolderProblem.NoConfig);
        if (!Directory.EnumerateFiles(full, "*.safetensors").Any()) return (full, LocalFolderProblem.NoWeights);
        return (full, LocalFolderProblem.None);
    }

    /// <summary>Model folders found directly under the roots (for a pick list).</summary>
    public IReadOnlyList<string> List() =>
        Roots.Where(Directory.Exists)
            .SelectMany(root => Directory.EnumerateDirectories(root))
            .Where(ModelReference.IsModelFolder)
            .OrderBy(d => d, StringComparer.Ordinal)
            .ToArray();

    /// <summary>The path with every symbolic link along it resolved, like realpath(3); parts that do not exist stay as they are.</summary>
    internal static string RealPath(string path)
    {
        string full = Path.GetFullPath(path);
        string root = Path.GetPathRoot(full)!;
        string current = root;
        var parts = new Queue<string>(full[root.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries));
        for (int hops = 0; parts.Count > 0;)
        {
            string next = Path.Combine(current, parts.Dequeue());
            var info = new FileInfo(next);
            if (info.LinkTarget is { } target)
            {
                if (++hops > 40) throw new IOException($"Too many levels of symbolic links in '{path}'.");
                // Continue from the link's target (relative to the link's folder), then the rest of the path.
                string resolved = Path.GetFullPath(target, current);
                var rest = parts.ToArray();
                parts = new Queue<string>(resolved[Path.GetPathRoot(resolved)!.Length..].Split(Path.DirectorySeparatorChar, StringSplitOptions.RemoveEmptyEntries).Concat(rest));
                current = Path.GetPathRoot(resolved)!;
                continue;
            }
            current = next;
        }
        return current;
    }

    internal static bool IsUnder(string path, string root)
    {
        string p = Path.TrimEndingDirectorySeparator(Path.GetFullPath(path));
        string r = Path.TrimEndingDirectorySeparator(Path.GetFullPath(root));
        return p.Equals(r, StringComparison.Ordinal) || p.StartsWith(r + Path.DirectorySeparatorChar, StringComparison.Ordinal);
    }
}
