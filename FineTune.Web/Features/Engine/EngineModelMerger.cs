using FineTune.Engine.Adapters;
using FineTune.Engine.Training;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.Engine;

/// <summary>Writes base + LoRA merged as a Hugging Face model folder (16-bit base: merging into NF4 would lose precision).</summary>
public sealed class EngineModelMerger(EngineModels models) : IModelMerger
{
    public async Task MergeAsync(int runId, string adapterDirectory, TrainingSettings settings, string outputDirectory, CancellationToken cancellationToken)
    {
        string folder = await models.ResolveFolderAsync(settings, cancellationToken);
        using var model = models.Load(folder, models.ComputeDtype(settings.Precision), fourBit: false);
        var linears = new CausalLmTraining(model).NamedLinears().ToArray();
        LoraInjector.Attach(linears, PeftAdapter.ReadSettings(adapterDirectory));
        PeftAdapter.Load(adapterDirectory, linears);
        string temporary = outputDirectory + ".tmp";
        if (Directory.Exists(temporary)) Directory.Delete(temporary, recursive: true);
        AdapterExport.WriteMerged(temporary, model, linears, folder);
        if (Directory.Exists(outputDirectory)) Directory.Delete(outputDirectory, recursive: true);
        Directory.Move(temporary, outputDirectory);
    }
}
