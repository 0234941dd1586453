using FineTune.Engine.Adapters;
using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using static TorchSharp.torch;

namespace FineTune.Engine.Training;

/// <summary>
/// One fine-tuning run, everything <see cref="FineTunePipeline"/> needs: what every front end (the wizard, the
/// headless `train` command, the benchmark) maps its own inputs to. Defaults are the tutorial's.
/// </summary>
public sealed record FineTuneJob
{
    /// <summary>A Hugging Face model folder (config.json, *.safetensors, tokenizer files), already on disk.</summary>
    public required string ModelFolder { get; init; }

    /// <summary>What the adapter records as base_model_name_or_path; null: <see cref="PeftAdapter.BaseModelName"/> of the folder.</summary>
    public string? BaseModelName { get; init; }

    /// <summary>The question–answer rows, made into examples through <see cref="Template"/>.</summary>
    public IReadOnlyList<QaRow> Rows { get; init; } = [];

    /// <summary>
    /// Multi-turn chats (a chat dataset), made into examples through the model's chat template with the loss on the
    /// assistant turns only; needs <see cref="Template"/> to be <see cref="PromptStyle.ModelChatTemplate"/>. Trained
    /// together with <see cref="Rows"/> when both are given.
    /// </summary>
    public IReadOnlyList<Conversation> Conversations { get; init; } = [];

    /// <summary>Examples already tokenized (the benchmark's data); when set, <see cref="Rows"/> and <see cref="Template"/> are not used.</summary>
    public IReadOnlyList<TrainingExample>? Examples { get; init; }

    /// <summary>How rows become text: the tutorial's layout (default), the model's chat template, or a custom one.</summary>
    public PromptTemplateSettings Template { get; init; } = new(PromptStyle.Tutorial);

    /// <summary>Rows longer than this (prompt + answer + EOS) are cut at the end.</summary>
    public int MaxSeqLength { get; init; } = 1024;

    /// <summary>Loss on the answer only (default), or on prompt and answer.</summary>
    public bool AnswerOnlyLoss { get; init; } = true;

    /// <summary>Share of the rows held out for validation loss (used from <see cref="Batching.MinimumRowsForValidation"/> rows).</summary>
    public double ValidationFraction { get; init; } = 0.1;

    public LoraSettings Lora { get; init; } = new();

    /// <summary>Trainer settings. Loss scaling is the pipeline's choice (fp16 compute), whatever is set here.</summary>
    public TrainingOptions Training { get; init; } = new();

    /// <summary>QLoRA: every linear but lm_head quantized to NF4 as it is read (bitsandbytes' load_in_4bit).</summary>
    public bool FourBit { get; init; }

    /// <summary>With <see cref="FourBit"/>: the NF4 block scales quantized again (bnb_4bit_use_double_quant).</summary>
    public bool DoubleQuantization { get; init; } = true;

    /// <summary>Compute dtype of the base weights and activations; null: the backend's (bf16/fp16 on CUDA, fp32 on the CPU).</summary>
    public ScalarType? ComputeDType { get; init; }

    /// <summary>Where the model goes; null: the compute backend's device.</summary>
    public Device? Device { get; init; }

    /// <summary>
    /// The GPUs of a data-parallel run, one replica each (<see cref="Distributed.DataParallelGroup"/>); every GPU of the
    /// machine is <see cref="Backend.BackendInfo.GpuDevices"/>. With more than one, each optimizer step's rows are shared
    /// out and the gradients summed: the same global batch, steps, schedule and checkpoints as on one device. Null or
    /// one device: <see cref="Device"/>, the single-device path.
    /// </summary>
    public IReadOnlyList<Device>? Devices { get; init; }

    /// <summary>Diagnostics: time every step's phases per replica, the device synchronized at each (<see cref="StepPhaseClock"/>); slower.</summary>
    public bool TimeStepPhases { get; init; }

    /// <summary>True when the job trains on more than one device.</summary>
    public bool IsDataParallel => Devices is { Count: > 1 };

    /// <summary>The adapter folder to write (PEFT files, tokenizer, model card, loss.csv, settings.json); null: none (benchmarks).</summary>
    public string? OutputFolder { get; init; }

    /// <summary>Where checkpoint-N folders go when <see cref="TrainingOptions.SaveSteps"/> &gt; 0.</summary>
    public string? CheckpointsFolder { get; init; }

    /// <summary>A checkpoint folder to continue from.</summary>
    public string? ResumeFrom { get; init; }

    /// <summary>A PEFT adapter folder whose weights replace the fresh adapters before training.</summary>
    public string? InitAdapter { get; init; }

    /// <summary>Also write base + LoRA merged as an HF model folder here.</summary>
    public string? MergedFolder { get; init; }

    /// <summary>The template as the model card and settings.json name it: tutorial, chat, or the custom text.</summary>
    public string TemplateName => Template.Style switch
    {
        PromptStyle.Tutorial => "tutorial",
        PromptStyle.ModelChatTemplate => "chat",
        _ => Template.CustomTemplate ?? "custom",
    };
}

/// <summary>How a <see cref="FineTuneJob"/> went.</summary>
/// <param name="Training">The trainer's result: loss history, final losses, steps, newest checkpoint.</param>
/// <param name="AdapterFolder">The adapter folder written, or null when the job named none.</param>
/// <param name="GradientCheckpointing">Whether layer activations were recomputed in backward.</param>
/// <param name="LoadTime">Loading the model and attaching the adapters.</param>
/// <param name="TrainTime">The training loop (device work finished).</param>
/// <param name="DeviceCount">How many devices trained (replicas of a data-parallel run).</param>
public sealed record FineTuneOutcome(
    TrainingResult Training, int TrainRows, int ValidationRows, string? AdapterFolder, string? MergedFolder,
    bool GradientCheckpointing, TimeSpan LoadTime, TimeSpan TrainTime, int DeviceCount = 1)
{
    /// <summary>With <see cref="FineTuneJob.TimeStepPhases"/>: each replica's phase times, by rank.</summary>
    public IReadOnlyList<StepPhaseTimes>? PhaseTimes { get; init; }
}
