using System.CommandLine;
using FineTune.Engine.Hub;
using Microsoft.Extensions.Logging;

namespace FineTune.Web.Headless;

/// <summary>
/// The <c>--model</c> option of train, generate and export-gguf: a Hugging Face model folder, or a Hub id resolved as the
/// engine resolves every model reference (<see cref="ModelReference"/>, then <see cref="HubDownloader.ResolveModelFolderAsync"/>:
/// downloaded once into the Hugging Face cache shared with Python, found there again, and only the cache with HF_HUB_OFFLINE=1).
/// </summary>
internal static class ModelOption
{
    public static Option<string> Create()
    {
        var option = new Option<string>("--model")
        {
            Description = "A Hugging Face model folder (config.json, *.safetensors, tokenizer.json) or a Hub id such as " +
                          "Qwen/Qwen2.5-0.5B-Instruct (downloaded once into the Hugging Face cache; HF_HUB_OFFLINE=1: the cache only)",
            HelpName = "folder|hub id",
            Required = true,
        };
        option.Validators.Add(result =>
        {
            if (result.Tokens.Count > 0 && Problem(result.Tokens[^1].Value) is { } problem) result.AddError(problem);
        });
        return option;
    }

    /// <summary>Why <paramref name="model"/> can be neither a model folder nor a Hub id; null when it can be one.</summary>
    public static string? Problem(string model) => ModelReference.Problem(model) is { } problem ? $"--model {problem}" : null;

    /// <summary>The model's folder: the folder itself, or the Hub id's snapshot in the cache (downloaded when missing, one line per file).</summary>
    public static async Task<string> ResolveAsync(string model, HubOptions hub, ILoggerFactory loggers, TextWriter log, CancellationToken cancellationToken)
    {
        using var http = new HttpClient();
        var downloader = new HubDownloader(http, hub, loggers.CreateLogger<HubDownloader>());
        return await downloader.ResolveModelFolderAsync(model, new FileLines(log), cancellationToken).ConfigureAwait(false);
    }

    /// <summary>"download: model.safetensors (2/5, 988.1 MiB)" as each file of a Hub download completes.</summary>
    private sealed class FileLines(TextWriter log) : IProgress<DownloadProgress>
    {
        public void Report(DownloadProgress p)
        {
            if (p.FileDone)
                log.WriteLine(FormattableString.Invariant($"download: {p.File} ({p.FileIndex + 1}/{p.FileCount}, {p.FileBytes / 1048576.0:0.0} MiB)"));
        }
    }
}
