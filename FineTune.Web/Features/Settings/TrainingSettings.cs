using System.Text.Json;
using System.Text.Json.Serialization;
using FineTune.Engine.Tokenization;
using FineTune.Engine.Training;

namespace FineTune.Web.Features.Settings;

public enum ModelSource { Preset, Hub, Local }

public enum Quantization { None, Nf4 }

/// <summary>Compute precision of the frozen base weights and activations. Auto: bf16 where the GPU has it, else fp16 (CPU: fp32).</summary>
public enum Precision { Auto, BFloat16, Float16, Float32 }

/// <summary>Which GPUs a run trains on. Auto: every GPU when the run is estimated to take long (GpuPool.LongRun), else one.</summary>
public enum GpuChoice { Auto, All, One }

/// <summary>
/// Everything a run needs, saved as settings.json with the run. Defaults are the tutorial's
/// (QLoRA on Qwen: NF4 with double quantization, r 16, alpha 32, dropout 0.05 on q/k/v/o, 3 epochs,
/// batch 1 × accumulation 4, lr 2e-4, max length 512).
/// </summary>
public sealed class TrainingSettings
{
    public ModelSource Source { get; set; } = ModelSource.Preset;
    /// <summary>Preset id, Hub id ("Qwen/Qwen2.5-0.5B-Instruct") or local folder.</summary>
    public string Model { get; set; } = "Qwen/Qwen2.5-0.5B-Instruct";

    public int LoraR { get; set; } = 16;
    public int LoraAlpha { get; set; } = 32;
    public double LoraDropout { get; set; } = 0.05;
    public List<string> TargetModules { get; set; } = ["q_proj", "k_proj", "v_proj", "o_proj"];

    public int Epochs { get; set; } = 3;
    public int BatchSize { get; set; } = 1;
    public int GradientAccumulationSteps { get; set; } = 4;
    public double LearningRate { get; set; } = 2e-4;
    /// <summary>Fraction of the optimizer steps spent warming the learning rate up.</summary>
    public double WarmupRatio { get; set; } = 0.03;
    public int MaxSeqLength { get; set; } = 512;
    public int LoggingSteps { get; set; } = 10;
    public int SaveSteps { get; set; } = 50;
    public int SaveTotalLimit { get; set; } = 2;
    /// <summary>Share of rows kept aside to measure eval loss (0: none).</summary>
    public double EvalFraction { get; set; } = 0.1;

    /// <summary>How rows become training text (and how chat and batch tests ask): the tutorial's layout by default.</summary>
    public PromptStyle PromptTemplate { get; set; } = PromptStyle.Tutorial;

    /// <summary>For <see cref="PromptStyle.Custom"/>: the text with {instruction} and {output} (and {input}, {system}).</summary>
    public string? CustomTemplate { get; set; }

    public Quantization Quantization { get; set; } = Quantization.Nf4;
    public bool DoubleQuantization { get; set; } = true;
    public Precision Precision { get; set; } = Precision.Auto;
    /// <summary>Every GPU of the machine (data parallel, same results as one GPU) or one GPU; Auto decides by the estimated time.</summary>
    public GpuChoice Gpus { get; set; } = GpuChoice.Auto;
    public int Seed { get; set; } = 42;

    /// <summary>
    /// The engine's trainer options for these settings: what the runner trains with and what the settings page's
    /// step plan counts with. Run-dependent options (eval steps, loss scaling) are set by the runner on top.
    /// </summary>
    public TrainingOptions ToTrainingOptions() => new()
    {
        Epochs = Epochs,
        LearningRate = LearningRate,
        BatchSize = BatchSize,
        GradientAccumulationSteps = GradientAccumulationSteps,
        WarmupRatio = WarmupRatio,
        Seed = Seed,
        LoggingSteps = LoggingSteps,
        SaveSteps = SaveSteps,
        SaveTotalLimit = SaveTotalLimit,
    };

    /// <summary>The engine's template settings: what training, the chat test, the batch test and the model card use.</summary>
    public PromptTemplateSettings ToPromptTemplate() =>
        new(PromptTemplate, PromptTemplate == PromptStyle.Custom ? CustomTemplate : null);

    private static readonly JsonSerializerOptions Json = new()
    {
        WriteIndented = true,
        Converters = { new JsonStringEnumConverter() },
    };

    public string ToJson() => JsonSerializer.Serialize(this, Json);

    public static TrainingSettings FromJson(string json) =>
        JsonSerializer.Deserialize<TrainingSettings>(json, Json)
        ?? throw new JsonException("settings.json holds null; expected a settings object.");

    public TrainingSettings Clone() => FromJson(ToJson());
}
