namespace FineTune.Web.Features.Download;

/// <summary>
/// A run's GGUF exports for llama.cpp / Ollama: data/runs/&lt;id&gt;/gguf/finetune-run&lt;id&gt;-&lt;type&gt;.gguf and the
/// Modelfile beside it, written by <see cref="IGgufExporter"/> and served by the download endpoints.
/// </summary>
public sealed class GgufDownloads(ArtifactPackager packager, FineTune.Web.Features.Runs.RunStore store)
{
    public static readonly IReadOnlyList<string> Types = ["q8_0", "q4_0", "f16"];

    public string Directory(int runId) => Path.Combine(store.RunDirectory(runId), "gguf");

    public static string FileName(int runId, string type) => $"finetune-run{runId}-{type}.gguf";

    public static string ModelfileName(int runId, string type) => $"finetune-run{runId}-{type}.Modelfile";

    public string GgufPath(int runId, string type) => Path.Combine(Directory(runId), FileName(runId, type));

    public bool Has(int runId, string type) =>
        File.Exists(GgufPath(runId, type)) && File.Exists(Path.Combine(Directory(runId), ModelfileName(runId, type)));

    /// <summary>The file a download URL names, when it is one of this run's exports (nothing else is served).</summary>
    public string? Served(int runId, string fileName) =>
        Types.Any(t => fileName == FileName(runId, t) || fileName == ModelfileName(runId, t)) && File.Exists(Path.Combine(Directory(runId), fileName))
            ? Path.Combine(Directory(runId), fileName)
            : null;

    public bool HasAdapter(int runId) => packager.HasAdapter(runId);

    public string AdapterDirectory(int runId) => packager.AdapterDirectory(runId);
}

/// <summary>Writes a run's model (base + adapter merged) as GGUF with its Ollama Modelfile.</summary>
public interface IGgufExporter
{
    /// <returns>The `ollama create` line for the export.</returns>
    Task<string> ExportAsync(int runId, string type, double temperature, double topP, CancellationToken cancellationToken);
}
