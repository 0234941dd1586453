using System.CommandLine;
using FineTune.Engine.Adapters;
using FineTune.Engine.Export;
using FineTune.Engine.Hub;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;
using static FineTune.Web.Headless.CommandOptions;

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

    public static readonly IReadOnlyDictionary<string, GgufFileType> Types = new Dictionary<string, GgufFileType>(StringComparer.Ordinal)
    {
        ["f16"] = GgufFileType.F16, ["q8_0"] = GgufFileType.Q8_0, ["q4_0"] = GgufFileType.Q4_0,
    };

    public static Command Create(HeadlessConsole console)
    {
        var model = ModelOption.Create();
        var adapter = Text("--adapter", "A LoRA adapter to merge in: the app's zip or a PEFT folder", "zip|folder");
        var outPath = Text("--out", "The GGUF file to write; the Ollama Modelfile is written beside it", "file.gguf", required: true);
        var type = Text("--type", "Weight type: f16, q8_0 or q4_0", "f16|q8_0|q4_0", required: true);
        type.Validators.Add(r =>
        {
            if (r.Tokens.Count > 0 && !Types.ContainsKey(r.Tokens[^1].Value)) r.AddError($"--type '{r.Tokens[^1].Value}' should be f16, q8_0 or q4_0.");
        });
        var command = new Command(Name, "Writes the model, with the adapter merged, as one GGUF file for llama.cpp / Ollama, and an Ollama Modelfile beside it")
        {
            model, adapter, outPath, type,
        };
        command.SetAction((parsed, cancellationToken) => RunAsync(
            parsed.GetValue(model)!, parsed.GetValue(adapter), parsed.GetValue(outPath)!, parsed.GetValue(type)!, console, cancellationToken));
        return command;
    }

    /// <summary>Runs the command; <paramref name="args"/> excludes the word "export-gguf".</summary>
    public static Task<int> RunAsync(IReadOnlyList<string> args, TextWriter output, TextWriter error, CancellationToken cancellationToken = default, HubOptions? hub = null) =>
        HeadlessCli.RunAsync([Name, .. args], new HeadlessConsole(output, error) { Hub = hub ?? new HubOptions() }, cancellationToken);

    private static async Task<int> RunAsync(string model, string? adapterPath, string outPath, string typeName, HeadlessConsole console, CancellationToken cancellationToken)
    {
        var (output, error) = (console.Output, console.Error);
        using var loggers = HeadlessCli.Loggers(console, Name);
        if (HeadlessCli.Backend(console, Name, loggers) is null) return 1;
        string? extracted = null;
        try
        {
            string folder = await ModelOption.ResolveAsync(model, console.Hub, loggers, output, cancellationToken).ConfigureAwait(false);
            string? adapter = adapterPath is null ? null : GenerateCommand.AdapterFolder(adapterPath, out extracted);
            var tokenizer = TokenizerLoader.Load(folder);
            string template = GenerateCommand.TrainedTemplate(adapter) ?? (ChatTemplate.ForTokenizer(tokenizer) is not null ? "chat" : "tutorial");
            var options = new GgufExportOptions(Types[typeName], adapter, GenerateCommand.TemplateSettings(template), Path.GetFileName(model.TrimEnd('/', '\\')))
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
        catch (Exception e) when (HeadlessCli.IsOneLineFailure(e))
        {
            await error.WriteLineAsync($"export-gguf: {HeadlessCli.OneLine(e.Message)}").ConfigureAwait(false);
            return 1;
        }
        finally
        {
            if (extracted is not null) Directory.Delete(extracted, recursive: true);
        }
    }
}
