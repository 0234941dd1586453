using System.Text.Json;
using System.Text.Json.Serialization;
using FineTune.Engine.Adapters;
using FineTune.Engine.Data;
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
/// The user's words for a training run, whichever front end took them: the wizard edits these, the headless
/// `train` command binds its options to them, and <see cref="ToFineTuneJob"/> is the one mapping to the engine's job.
/// </summary>
public sealed class TrainingSettings
{
    public ModelSource Source { get; set; } = ModelSource.Preset;
    /// <summary>Preset id, Hub id ("Qwen/Qwen2.5-0.5B-Instruct") or local folder.</summary>
    public string Model { get; set; } = "Qwen/Qwen2.5-0.5B-Instruct";

    public int LoraR { get; set; } = 16;
    public double LoraAlpha { get; set; } = 32;
    public double LoraDropout { get; set; } = 0.05;
    public List<string> TargetModules { get; set; } = ["q_proj", "k_proj", "v_proj", "o_proj"];

    /// <summary>Passes over the training rows; a fraction stops part-way through the last one (HF's num_train_epochs).</summary>
    public double Epochs { get; set; } = 3;
    public int BatchSize { get; set; } = 1;
    public int GradientAccumulationSteps { get; set; } = 4;
    public double LearningRate { get; set; } = 2e-4;
    /// <summary>Fraction of the optimizer steps spent warming the learning rate up.</summary>
    public double WarmupRatio { get; set; } = 0.03;
    /// <summary>Warm-up in optimizer steps; wins over <see cref="WarmupRatio"/> when above 0 (HF's warmup_steps).</summary>
    public int WarmupSteps { get; set; }
    public LearningRateScheduleKind Schedule { get; set; } = LearningRateScheduleKind.Linear;
    /// <summary>How rows are batched: packed into one sequence (no padding) or grouped by length and padded.</summary>
    public BatchLayout Layout { get; set; } = BatchLayout.Packed;
    /// <summary>Recompute layer activations in backward to save memory; null: the engine decides (on for a 4-bit base).</summary>
    public bool? GradientCheckpointing { get; set; }
    /// <summary>Loss on the answer tokens only (the tutorial's); false: on the prompt too.</summary>
    public bool AnswerOnlyLoss { get; set; } = true;
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

    /// <summary>
    /// The frozen base weights are loaded 4-bit (NF4): what training, chat, the memory and time estimates and the settings
    /// page ask. Computed from <see cref="Quantization"/>, so never stored (settings.json stays as it was).
    /// </summary>
    [JsonIgnore]
    public bool FourBit => Quantization == Quantization.Nf4;

    /// <summary>Quantizes the 4-bit base's absmax constants too (bitsandbytes' double quantization); only with <see cref="FourBit"/>.</summary>
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
        WarmupSteps = WarmupSteps,
        Schedule = Schedule,
        Layout = Layout,
        GradientCheckpointing = GradientCheckpointing,
        Seed = Seed,
        LoggingSteps = LoggingSteps,
        SaveSteps = SaveSteps,
        SaveTotalLimit = SaveTotalLimit,
    };

    /// <summary>The engine's LoRA settings: rank, alpha, dropout and target modules.</summary>
    public LoraSettings ToLoraSettings() => new(LoraR, LoraAlpha, LoraDropout, TargetModules);

    /// <summary>
    /// The engine's job for these settings, the one mapping every front end uses (the wizard's runner and the headless
    /// `train` command): <paramref name="modelFolder"/> is <see cref="Model"/> resolved to a folder; the caller adds only
    /// what belongs to its run (resume point, devices, evaluation pace, extra exports).
    /// </summary>
    public FineTuneJob ToFineTuneJob(string modelFolder, IReadOnlyList<QaRow> rows, string outputFolder, string checkpointsFolder) => new()
    {
        ModelFolder = modelFolder,
        // PEFT's base_model_name_or_path: the Hub id the user gave, else what the folder's config.json says.
        BaseModelName = Source == ModelSource.Local ? null : Model,
        Rows = rows,
        Template = ToPromptTemplate(),
        MaxSeqLength = MaxSeqLength,
        AnswerOnlyLoss = AnswerOnlyLoss,
        ValidationFraction = EvalFraction,
        Lora = ToLoraSettings(),
        Training = ToTrainingOptions(),
        FourBit = FourBit,
        DoubleQuantization = DoubleQuantization,
        OutputFolder = outputFolder,
        CheckpointsFolder = checkpointsFolder,
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
