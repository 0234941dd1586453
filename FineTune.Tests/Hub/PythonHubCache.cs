namespace FineTune.Tests.Hub;

/// <summary>
/// Writes a model into a cache folder step for step as Python's huggingface_hub 0.x/1.x hf_hub_download does
/// (file_download.py): the contents in blobs/&lt;etag&gt;, the snapshot entry a symlink relative to its folder
/// (os.path.relpath(blob, dirname(pointer))), refs/&lt;revision&gt; holding the commit without a newline, and an empty
/// .no_exist/&lt;commit&gt;/&lt;name&gt; for each file asked for that the repository lacks.
/// </summary>
internal static class PythonHubCache
{
    public static string RepositoryFolder(string cache, string repoId) => Path.Combine(cache, "models--" + repoId.Replace("/", "--"));

    public static string Add(string cache, string repoId, string commit, IReadOnlyDictionary<string, byte[]> files,
        IEnumerable<string>? missing = null, string revision = "main")
    {
        string repository = RepositoryFolder(cache, repoId);
        string snapshot = Path.Combine(repository, "snapshots", commit);
        foreach (var (name, bytes) in files)
        {
            string blob = Path.Combine(repository, "blobs", FakeHub.Etag(name, bytes));
            string pointer = Path.Combine(snapshot, name);
            Directory.CreateDirectory(Path.GetDirectoryName(blob)!);
            Directory.CreateDirectory(Path.GetDirectoryName(pointer)!);
            if (!File.Exists(blob)) File.WriteAllBytes(blob, bytes);
            File.CreateSymbolicLink(pointer, Path.GetRelativePath(Path.GetDirectoryName(pointer)!, blob));
        }
        foreach (string name in missing ?? [])
        {
            string marker = Path.Combine(repository, ".no_exist", commit, name);
            Directory.CreateDirectory(Path.GetDirectoryName(marker)!);
            File.WriteAllBytes(marker, []);
        }
        Directory.CreateDirectory(Path.Combine(repository, "refs"));
        File.WriteAllText(Path.Combine(repository, "refs", revision), commit);
        return snapshot;
    }

    /// <summary>The files of a fixture model folder, as its Hub repository would hold them.</summary>
    public static Dictionary<string, byte[]> FilesOf(string folder, params string[] names) =>
        names.ToDictionary(n => n, n => File.ReadAllBytes(Path.Combine(folder, n)), StringComparer.Ordinal);
}
