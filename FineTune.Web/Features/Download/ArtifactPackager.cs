using System.IO.Compression;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.Download;

/// <summary>
/// Packs the downloads of a finished run: the adapter zip (the folder adapter/ exactly as the engine's one writer,
/// AdapterExport, produced it: PEFT files, tokenizer files, model card, loss.csv, settings.json) and the merged model
/// zip (merged/). Zips are built once into data/runs/&lt;id&gt;/download/ and served from there (range requests work).
/// </summary>
public sealed class ArtifactPackager(RunStore store)
{
    public const string AdapterFolder = "adapter";
    public const string MergedFolder = "merged";

    public string AdapterDirectory(int runId) => Path.Combine(store.RunDirectory(runId), AdapterFolder);
    public string MergedDirectory(int runId) => Path.Combine(store.RunDirectory(runId), MergedFolder);

    public bool HasAdapter(int runId) => File.Exists(Path.Combine(AdapterDirectory(runId), "adapter_config.json"));
    public bool HasMerged(int runId) => File.Exists(Path.Combine(MergedDirectory(runId), "config.json"));

    /// <summary>The files of the adapter zip (what the writer produced), by name.</summary>
    public IReadOnlyList<string> AdapterFiles(int runId) =>
        HasAdapter(runId)
            ? [.. Directory.EnumerateFiles(AdapterDirectory(runId), "*", SearchOption.AllDirectories)
                .Select(path => Path.GetRelativePath(AdapterDirectory(runId), path).Replace('\\', '/')).Order(StringComparer.Ordinal)]
            : [];

    public async Task<string> AdapterZipAsync(int runId, CancellationToken cancellationToken = default)
    {
        _ = await store.GetAsync(runId, cancellationToken) ?? throw new KeyNotFoundException($"Run {runId} does not exist.");
        if (!HasAdapter(runId))
            throw new FileNotFoundException($"Run {runId} has no adapter yet (adapter/adapter_config.json); it must finish training first.");
        string zip = Path.Combine(store.RunDirectory(runId), "download", $"finetune-run{runId}-adapter.zip");
        if (File.Exists(zip) && File.GetLastWriteTimeUtc(zip) >= Directory.GetLastWriteTimeUtc(AdapterDirectory(runId)))
            return zip;

        Directory.CreateDirectory(Path.GetDirectoryName(zip)!);
        string temporary = zip + ".tmp";
        await using (var file = File.Create(temporary))
        using (var archive = new ZipArchive(file, ZipArchiveMode.Create))
        {
            string adapter = AdapterDirectory(runId);
            foreach (string name in AdapterFiles(runId))
                archive.CreateEntryFromFile(Path.Combine(adapter, name), name, CompressionLevel.Fastest);
        }
        File.Move(temporary, zip, overwrite: true);
        return zip;
    }

    public string MergedZip(int runId)
    {
        if (!HasMerged(runId))
            throw new FileNotFoundException($"Run {runId} has no merged model yet; merge it first.");
        string zip = Path.Combine(store.RunDirectory(runId), "download", $"finetune-run{runId}-merged.zip");
        if (File.Exists(zip)) return zip;
        Directory.CreateDirectory(Path.GetDirectoryName(zip)!);
        // Weights do not compress: store them.
        ZipFile.CreateFromDirectory(MergedDirectory(runId), zip + ".tmp", CompressionLevel.NoCompression, includeBaseDirectory: false);
        File.Move(zip + ".tmp", zip, overwrite: true);
        return zip;
    }
}

/// <summary>Merges a run's adapter into its base model weights (the engine's Adapters merge).</summary>
public interface IModelMerger
{
    Task MergeAsync(int runId, string adapterDirectory, TrainingSettings settings, string outputDirectory, CancellationToken cancellationToken);
}

