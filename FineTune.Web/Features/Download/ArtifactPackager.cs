using System.Globalization;
using System.IO.Compression;
using System.Text;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.Download;

/// <summary>
/// Builds the downloads of a finished run: the adapter zip (PEFT files as the trainer wrote them in adapter/,
/// plus README.md model card, loss.csv and settings.json) and the merged model zip (merged/).
/// Zips are built once into data/runs/&lt;id&gt;/download/ and served from there (range requests work).
/// </summary>
public sealed class ArtifactPackager(RunStore store)
{
    public const string AdapterFolder = "adapter";
    public const string MergedFolder = "merged";

    public string AdapterDirectory(int runId) => Path.Combine(store.RunDirectory(runId), AdapterFolder);
    public string MergedDirectory(int runId) => Path.Combine(store.RunDirectory(runId), MergedFolder);

    public bool HasAdapter(int runId) => File.Exists(Path.Combine(AdapterDirectory(runId), "adapter_config.json"));
    public bool HasMerged(int runId) => File.Exists(Path.Combine(MergedDirectory(runId), "config.json"));

    public async Task<string> AdapterZipAsync(int runId, CancellationToken cancellationToken = default)
    {
        var run = await store.GetAsync(runId, cancellationToken) ?? throw new KeyNotFoundException($"Run {runId} does not exist.");
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
            foreach (string path in Directory.EnumerateFiles(adapter, "*", SearchOption.AllDirectories))
                archive.CreateEntryFromFile(path, Path.GetRelativePath(adapter, path).Replace('\\', '/'), CompressionLevel.Fastest);
            // The engine writes its own model card, loss curve and settings; fill in only what is missing.
            var metrics = await store.MetricsAsync(runId, cancellationToken);
            if (!File.Exists(Path.Combine(adapter, "README.md"))) Add(archive, "README.md", ModelCard(run, metrics));
            if (!File.Exists(Path.Combine(adapter, "loss.csv"))) Add(archive, "loss.csv", LossCsv(metrics));
            if (!File.Exists(Path.Combine(adapter, "settings.json"))) Add(archive, "settings.json", run.SettingsJson);
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

    private static void Add(ZipArchive archive, string name, string text)
    {
        using var writer = new StreamWriter(archive.CreateEntry(name).Open(), new UTF8Encoding(false));
        writer.Write(text);
    }

    internal static string LossCsv(IEnumerable<RunMetric> metrics)
    {
        var sb = new StringBuilder("step,epoch,loss,eval_loss,learning_rate\n");
        foreach (var m in metrics)
            sb.Append(CultureInfo.InvariantCulture, $"{m.Step},{m.Epoch:0.####},{m.Loss:0.######},{m.EvalLoss:0.######},{m.LearningRate:0.########}\n");
        return sb.ToString();
    }

    /// <summary>A Hugging Face model card (front matter PEFT and the Hub read) describing how the adapter was made.</summary>
    internal static string ModelCard(Run run, IReadOnlyList<RunMetric> metrics)
    {
        var s = TrainingSettings.FromJson(run.SettingsJson);
        var inv = CultureInfo.InvariantCulture;
        return string.Create(inv, $"""
            ---
            base_model: {run.Model}
            library_name: peft
            tags:
            - lora
            - finetune
            ---

            # LoRA adapter for {run.Model}

            Trained with FineTune (run {run.Id}) on {run.DatasetRows} question–answer rows from `{run.DatasetFileName}`
            (dataset SHA-256 `{run.DatasetHash}`).

            | setting | value |
            | --- | --- |
            | LoRA r / alpha / dropout | {s.LoraR} / {s.LoraAlpha} / {s.LoraDropout} |
            | target modules | {string.Join(", ", s.TargetModules)} |
            | epochs | {s.Epochs} |
            | batch × accumulation | {s.BatchSize} × {s.GradientAccumulationSteps} |
            | learning rate | {s.LearningRate} |
            | max length | {s.MaxSeqLength} |
            | base weights | {(s.Quantization == Quantization.Nf4 ? "4-bit NF4" + (s.DoubleQuantization ? " (double quantization)" : "") : "16-bit")} |
            | final train loss | {run.FinalTrainLoss?.ToString("0.####", inv) ?? "-"} |
            | final eval loss | {run.FinalEvalLoss?.ToString("0.####", inv) ?? "-"} |
            | steps | {run.LastStep} |

            ## Use with PEFT

            ```python
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained("{run.Model}")
            model = PeftModel.from_pretrained(base, "path/to/this/folder")
            ```

            `loss.csv` has the loss curve ({metrics.Count} points); `settings.json` all settings.
            """);
    }
}

/// <summary>Merges a run's adapter into its base model weights (the engine's Adapters merge).</summary>
public interface IModelMerger
{
    Task MergeAsync(int runId, string adapterDirectory, TrainingSettings settings, string outputDirectory, CancellationToken cancellationToken);
}

