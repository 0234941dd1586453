using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Export;
using FineTune.Engine.Hub;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;

namespace FineTune.Web.Headless;

/// <summary>
/// <c>export-gguf --model &lt;folder|hub id&gt; [--adapter &lt;zip|folder&gt;] --out &lt;file.gguf&gt; --type f16|q8_0|q4_0</c>:
/// the model (with the adapter merged) as one GGUF file for llama.cpp / Ollama, and an Ollama Modelfile beside it
/// (&lt;file&gt;.Modelfile) whose TEMPLATE is the adapter's training template (settings.json; the model's chat template
/// without an adapter). Prints what it wrote and the `ollama create` line. Exit codes as `generate`: 2 usage, 1 failure.
/// </summary>
public static class ExportGgufCommand
{
    public const string Name = "export-gguf";

    public const string Usage = "usage: export-gguf --model <folder|hub id> [--adapter <zip|folder>] --out <file.gguf> --type f16|q8_0|q4_0";

    public static readonly IReadOnlyDictionary<string, GgufFileType> Types = new Dictionary<string, GgufFileType>(StringComparer.Ordinal)
    {
        ["f16"] = GgufFileType.F16, ["q8_0"] = GgufFileType.Q8_0, ["q4_0"] = GgufFileType.Q4_0,
    };

    /// <summary>Runs the command; <paramref name="args"/> excludes the word "export-gguf".</summary>
    public static async Task<int> RunAsync(IReadOnlyList<string> args, TextWriter output, TextWriter error, CancellationToken cancellationToken = default)
    {
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        string[] known = ["--model", "--adapter", "--out", "--type"];
        for (int i = 0; i < args.Count; i++)
        {
            string? problem = !known.Contains(args[i]) ? $"unknown argument '{args[i]}'."
                : i + 1 >= args.Count ? $"{args[i]} needs a value."
                : !values.TryAdd(args[i], args[++i]) ? $"{args[i - 1]} is given twice."
                : null;
            if (problem is not null) return await UsageAsync(error, problem);
        }
        if (!values.TryGetValue("--model", out string? model)) return await UsageAsync(error, "--model is required.");
        if (!values.TryGetValue("--out", out string? outPath)) return await UsageAsync(error, "--out is required.");
        if (!values.TryGetValue("--type", out string? typeName)) return await UsageAsync(error, "--type is required.");
        if (!Types.TryGetValue(typeName, out var type)) return await UsageAsync(error, $"--type '{typeName}' should be f16, q8_0 or q4_0.");

        string? extracted = null;
        try
        {
            string folder = await GenerateCommand.ResolveModelFolderAsync(model, cancellationToken).ConfigureAwait(false);
            string? adapter = values.TryGetValue("--adapter", out string? a) ? GenerateCommand.AdapterFolder(a, out extracted) : null;
            ComputeBackend.Initialize();
            var tokenizer = TokenizerLoader.Load(folder);
            string template = GenerateCommand.TrainedTemplate(adapter) ?? (ChatTemplate.ForTokenizer(tokenizer) is not null ? "chat" : "tutorial");
            var options = new GgufExportOptions(type, adapter, GenerateCommand.TemplateSettings(template), Path.GetFileName(model.TrimEnd('/', '\\')))
            {
                CancellationToken = cancellationToken,
            };
            var result = GgufPackage.Write(folder, outPath, options);
            await output.WriteLineAsync($"wrote {result.Gguf} ({result.Export.Bytes / 1048576.0:0.0} MiB, {result.Export.Architecture}, {typeName}, {result.Export.MergedLayers} LoRA layers merged)").ConfigureAwait(false);
            await output.WriteLineAsync($"wrote {result.Modelfile}").ConfigureAwait(false);
            await output.WriteLineAsync($"in {Path.GetDirectoryName(Path.GetFullPath(result.Modelfile))}: {result.OllamaCreate}").ConfigureAwait(false);
            return 0;
        }
        catch (OperationCanceledException)
        {
            await error.WriteLineAsync("export-gguf: interrupted").ConfigureAwait(false);
            return 130;
        }
        catch (Exception e) when (e is ModelFormatException or UnsupportedModelException or TokenizerLoadException or HubException
                                      or AdapterFormatException or PromptTemplateException or GgufExportException or ArithmeticException
                                      or IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException
                                      or InvalidOperationException or InvalidDataException or HttpRequestException
                                      or System.Runtime.InteropServices.ExternalException)
        {
            await error.WriteLineAsync($"export-gguf: {e.Message.ReplaceLineEndings(" ").Trim()}").ConfigureAwait(false);
            return 1;
        }
        finally
        {
            if (extracted is not null) Directory.Delete(extracted, recursive: true);
        }
    }

    private static async Task<int> UsageAsync(TextWriter error, string problem)
    {
        await error.WriteLineAsync($"export-gguf: {problem}").ConfigureAwait(false);
        await error.WriteLineAsync(Usage).ConfigureAwait(false);
        return 2;
    }
}
