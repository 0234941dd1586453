using FineTune.Engine.Backend;
using FineTune.Engine.Hub;
using FineTune.Engine.Models;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Settings;
using static TorchSharp.torch;

namespace FineTune.Web.Features.Engine;

/// <summary>Where a run's model lives on disk, and how it is loaded for training and chat (one place for both).</summary>
public sealed class EngineModels(BackendInfo backend, LocalModelFolders localFolders, ModelDownloadService downloads, ILoggerFactory loggers)
{
    /// <summary>A local folder (checked against the allowed roots) or the Hub id downloaded into the Hugging Face cache.</summary>
    public async Task<string> ResolveFolderAsync(TrainingSettings settings, CancellationToken cancellationToken)
    {
        if (settings.Source == ModelSource.Local)
        {
            var (full, problem) = localFolders.Check(settings.Model);
            if (problem != LocalFolderProblem.None)
                throw new DirectoryNotFoundException($"The model folder '{settings.Model}' cannot be used ({problem}); choose a folder with config.json and *.safetensors under {string.Join(", ", localFolders.Roots)}.");
            return full!;
        }
        if (!ModelReference.IsHubId(settings.Model))
            throw new ArgumentException($"'{settings.Model}' is not a Hugging Face model id (owner/name).");
        // The same download the Model step started (or its finished folder), so training does not fetch the model again.
        return await downloads.ResolveAsync(settings.Model, cancellationToken);
    }

    /// <summary>The compute dtype: the user's choice, or bf16 where the GPU has it, fp16 on older GPUs, fp32 on the CPU.</summary>
    public ScalarType ComputeDtype(Precision precision) => precision switch
    {
        Precision.BFloat16 => ScalarType.BFloat16,
        Precision.Float16 => ScalarType.Float16,
        Precision.Float32 => ScalarType.Float32,
        _ => backend.ComputeDType,
    };

    /// <summary>
    /// Loads the base model; with <paramref name="fourBit"/> every linear but lm_head is quantized to NF4 as it is read
    /// (as bitsandbytes does), its absmaxes double-quantized unless <paramref name="doubleQuantization"/> is false.
    /// </summary>
    public CausalLM Load(string folder, ScalarType dtype, bool fourBit, bool doubleQuantization = true) =>
        ModelLoader.Load(folder, ModelLoadOptions.Base(dtype, fourBit, doubleQuantization, logger: loggers.CreateLogger("FineTune.Models")));
}
