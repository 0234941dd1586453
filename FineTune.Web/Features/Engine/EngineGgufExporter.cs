using FineTune.Engine.Export;
using FineTune.Engine.Tokenization;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.Engine;

/// <summary>GGUF export of a finished run through the engine (tensor by tensor; the base model is never loaded whole).</summary>
public sealed class EngineGgufExporter(EngineModels models, RunStore store, GgufDownloads downloads, ILoggerFactory loggers) : IGgufExporter
{
    private static readonly Dictionary<string, GgufFileType> FileTypes = new(StringComparer.Ordinal)
    {
        ["f16"] = GgufFileType.F16, ["q8_0"] = GgufFileType.Q8_0, ["q4_0"] = GgufFileType.Q4_0,
    };

    public async Task<string> ExportAsync(int runId, string type, double temperature, double topP, CancellationToken cancellationToken)
    {
        if (!FileTypes.TryGetValue(type, out var fileType)) throw new ArgumentException($"GGUF type '{type}' is not one of f16, q8_0, q4_0.", nameof(type));
        var run = await store.GetAsync(runId, cancellationToken) ?? throw new KeyNotFoundException($"Run {runId} does not exist.");
        if (!downloads.HasAdapter(runId)) throw new FileNotFoundException($"Run {runId} has no adapter yet; it must finish training first.");
        var settings = TrainingSettings.FromJson(run.SettingsJson);
        string folder = await models.ResolveFolderAsync(settings, cancellationToken);
        // The prompt layout the run trained with (its settings: tutorial, the model's chat template or a custom one).
        var template = settings.ToPromptTemplate();
        var options = new GgufExportOptions(fileType, downloads.AdapterDirectory(runId), template, $"finetune-run{runId}")
        {
            CancellationToken = cancellationToken,
            Logger = loggers.CreateLogger("FineTune.Export"),
        };
        var result = await Task.Run(() => GgufPackage.Write(folder, downloads.GgufPath(runId, type), options, temperature, topP), cancellationToken);
        return result.OllamaCreate;
    }
}
