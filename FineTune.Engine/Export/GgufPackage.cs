using FineTune.Engine.Generation;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;

namespace FineTune.Engine.Export;

/// <summary>What an export wrote: the GGUF, the Modelfile beside it, and the GGUF's details.</summary>
public sealed record GgufPackageResult(string Gguf, string Modelfile, GgufExportResult Export)
{
    /// <summary>The one line that makes an Ollama model of the export (run in the folder of the two files).</summary>
    public string OllamaCreate => OllamaModelfile.CreateCommand(Modelfile);
}

/// <summary>
/// The export every front end offers (CLI, download step): the GGUF and an Ollama Modelfile named like it
/// (model.gguf → model.Modelfile), TEMPLATE from the run's prompt format, sampling from the test step's settings or
/// else the model's generation_config.json.
/// </summary>
public static class GgufPackage
{
    public static GgufPackageResult Write(string modelFolder, string outPath, GgufExportOptions options, double? temperature = null, double? topP = null)
    {
        var export = GgufExport.Export(modelFolder, outPath, options);
        var tokenizer = TokenizerLoader.Load(modelFolder);
        var defaults = GenerationSettings.FromModelFolder(modelFolder, ModelConfig.Load(modelFolder), tokenizer.EosTokenIds);
        double t = temperature ?? (defaults.DoSample ? defaults.Temperature : 0);
        double p = topP ?? (defaults.DoSample ? defaults.TopP : 1);
        string modelfile = Path.ChangeExtension(outPath, ".Modelfile");
        var template = options.Template ?? new PromptTemplateSettings(PromptStyle.ModelChatTemplate);
        File.WriteAllText(modelfile, OllamaModelfile.Build(Path.GetFileName(outPath), template, tokenizer, t, p));
        return new GgufPackageResult(outPath, modelfile, export);
    }
}
