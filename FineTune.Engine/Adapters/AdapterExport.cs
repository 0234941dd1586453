using System.Globalization;
using System.IO.Compression;
using System.Text;
using System.Text.Json;
using FineTune.Engine.Models;
using FineTune.Engine.Training;
using static TorchSharp.torch;

namespace FineTune.Engine.Adapters;

/// <summary>What the model card and settings.json say about a run: its job, as run, and how it went.</summary>
/// <param name="Job">The job as given (model, rows' template, LoRA, quantization, ...).</param>
/// <param name="BaseModel">base_model_name_or_path, as the adapter records it.</param>
/// <param name="Training">The trainer options the run used (the job's, with the pipeline's choices such as loss scaling).</param>
/// <param name="ComputeDType">The dtype the base model computed in.</param>
public sealed record AdapterRunInfo(
    FineTuneJob Job, string BaseModel, int TrainRows, int ValidationRows, TrainingOptions Training, ScalarType ComputeDType,
    bool GradientCheckpointing, TrainingResult Result, DateTimeOffset FinishedAt);

/// <summary>
/// The one writer of a run's downloadable result: a PEFT adapter folder (adapter_config.json, adapter_model.safetensors)
/// with the base model's tokenizer files, README.md (model card), loss.csv and settings.json. The web's download only
/// zips this folder. Also the merged export: base + LoRA folded into one HF model folder.
/// </summary>
public static class AdapterExport
{
    public const string ModelCardFile = "README.md";
    public const string LossFile = "loss.csv";
    public const string SettingsFile = "settings.json";

    /// <summary>Tokenizer files copied from the base model folder when present.</summary>
    public static readonly string[] TokenizerFiles =
    [
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
        "tokenizer.model", "qwen.tiktoken", "chat_template.jinja", "added_tokens.json",
    ];

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    /// <summary>The adapter's weights and config (PEFT), then <see cref="WriteRunFiles"/>.</summary>
    public static void WriteFolder(string folder, IEnumerable<(string Name, LoraLinear Layer)> linears, AdapterRunInfo info)
    {
        Directory.CreateDirectory(folder);
        PeftAdapter.Save(folder, linears, info.Job.Lora, info.BaseModel);
        WriteRunFiles(folder, info);
    }

    /// <summary>What goes beside the PEFT files: the base model's tokenizer files, loss.csv, settings.json and the model card.</summary>
    public static void WriteRunFiles(string folder, AdapterRunInfo info)
    {
        Directory.CreateDirectory(folder);
        foreach (var file in TokenizerFiles)
        {
            string source = Path.Combine(info.Job.ModelFolder, file);
            if (File.Exists(source)) File.Copy(source, Path.Combine(folder, file), overwrite: true);
        }
        File.WriteAllText(Path.Combine(folder, LossFile), LossCsv(info.Result.History), new UTF8Encoding(false));
        File.WriteAllText(Path.Combine(folder, SettingsFile), JsonSerializer.Serialize(Settings(info), Indented) + "\n", new UTF8Encoding(false));
        File.WriteAllText(Path.Combine(folder, ModelCardFile), ModelCard(info), new UTF8Encoding(false));
    }

    /// <summary>Zips a folder's files (flat, as PEFT's folder) into <paramref name="zipPath"/>, replacing it.</summary>
    public static void Zip(string folder, string zipPath)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(zipPath))!);
        string temporary = zipPath + ".partial";
        if (File.Exists(temporary)) File.Delete(temporary);
        ZipFile.CreateFromDirectory(folder, temporary, CompressionLevel.Optimal, includeBaseDirectory: false);
        File.Move(temporary, zipPath, overwrite: true);
    }

    /// <summary>Every optimizer step: HF Trainer's log_history fields, one row each.</summary>
    public static string LossCsv(IEnumerable<StepRecord> history)
    {
        var csv = new StringBuilder("step,epoch,loss,learning_rate,grad_norm,eval_loss\n");
        foreach (var h in history)
            csv.Append(CultureInfo.InvariantCulture, $"{h.Step},{h.Epoch:0.####},{h.Loss:R},{h.LearningRate:R},{h.GradNorm:R},{(h.EvalLoss is double e ? e.ToString("R", CultureInfo.InvariantCulture) : "")}\n");
        return csv.ToString();
    }

    private static object Settings(AdapterRunInfo info)
    {
        var job = info.Job;
        var t = info.Training;
        return new
        {
            base_model = info.BaseModel,
            train_rows = info.TrainRows,
            validation_rows = info.ValidationRows,
            validation_fraction = job.ValidationFraction,
            qlora = job.FourBit,
            double_quantization = job.FourBit && job.DoubleQuantization,
            compute_dtype = DTypeName(info.ComputeDType),
            template = job.TemplateName,
            system_prompt = job.Template.SystemPrompt,
            answer_only_loss = job.AnswerOnlyLoss,
            max_seq_length = job.MaxSeqLength,
            init_adapter = job.InitAdapter,
            resumed_from = job.ResumeFrom,
            lora = new { r = job.Lora.Rank, lora_alpha = job.Lora.Alpha, lora_dropout = job.Lora.Dropout, target_modules = job.Lora.Targets, use_rslora = job.Lora.UseRsLora },
            training = new
            {
                epochs = t.Epochs, learning_rate = t.LearningRate, batch_size = t.BatchSize,
                gradient_accumulation_steps = t.GradientAccumulationSteps, weight_decay = t.WeightDecay,
                max_grad_norm = t.MaxGradNorm, lr_scheduler_type = t.Schedule.ToString().ToLowerInvariant(),
                warmup_steps = t.WarmupSteps, warmup_ratio = t.WarmupRatio, seed = t.Seed,
                layout = t.Layout.ToString(), gradient_checkpointing = info.GradientCheckpointing,
                checkpointed_layer_share = info.GradientCheckpointing ? 1 : t.CheckpointedShare, loss_scaling = t.UseLossScaling,
                logging_steps = t.LoggingSteps, eval_steps = t.EvalSteps, save_steps = t.SaveSteps,
            },
            steps = info.Result.StepsDone,
            total_steps = info.Result.TotalSteps,
            final_train_loss = info.Result.FinalTrainLoss,
            final_eval_loss = info.Result.FinalEvalLoss,
            finished_at = info.FinishedAt.ToString("O", CultureInfo.InvariantCulture),
        };
    }

    private static string DTypeName(ScalarType dtype) => dtype switch
    {
        ScalarType.BFloat16 => "bfloat16",
        ScalarType.Float16 => "float16",
        ScalarType.Float32 => "float32",
        _ => dtype.ToString().ToLowerInvariant(),
    };

    /// <summary>A Hugging Face model card (front matter PEFT and the Hub read) with the settings the run really used.</summary>
    public static string ModelCard(AdapterRunInfo info)
    {
        static string F(double? v) => v is double d ? d.ToString("0.####", CultureInfo.InvariantCulture) : "—";
        var job = info.Job;
        var t = info.Training;
        string method = job.FourBit
            ? $"QLoRA (base in NF4{(job.DoubleQuantization ? ", double quantization" : "")}, compute in {DTypeName(info.ComputeDType)})"
            : $"LoRA (base in {DTypeName(info.ComputeDType)})";
        bool custom = job.Template.Style == Tokenization.PromptStyle.Custom;
        var card = new StringBuilder();
        card.Append(CultureInfo.InvariantCulture, $"""
            ---
            base_model: {info.BaseModel}
            library_name: peft
            tags:
            - lora
            {(job.FourBit ? "- qlora\n" : "")}- finetune
            ---

            # LoRA adapter for {info.BaseModel}

            Trained with FineTune on {info.TrainRows} {(job.Conversations.Count > 0 ? "examples of multi-turn conversations, the loss on the assistant's turns" : "question–answer rows")} ({info.ValidationRows} more held out for validation), finished {info.FinishedAt:yyyy-MM-dd HH:mm} UTC.

            | setting | value |
            |---|---|
            | method | {method} |
            | LoRA r / alpha / dropout | {job.Lora.Rank} / {F(job.Lora.Alpha)} / {F(job.Lora.Dropout)} |
            | target modules | {string.Join(", ", job.Lora.Targets)} |
            | epochs | {F(t.Epochs)} ({info.Result.StepsDone} of {info.Result.TotalSteps} optimizer steps) |
            | batch × accumulation | {t.BatchSize} × {t.GradientAccumulationSteps} |
            | learning rate | {t.LearningRate.ToString("G3", CultureInfo.InvariantCulture)} ({t.Schedule.ToString().ToLowerInvariant()} schedule) |
            | max length | {job.MaxSeqLength} tokens |
            | prompt template | {(custom ? "custom (below)" : job.TemplateName)} |
            | loss on | {(job.AnswerOnlyLoss ? "answers only" : "prompt and answer")} |
            | seed | {t.Seed} |
            | final train loss | {F(info.Result.FinalTrainLoss)} |
            | final validation loss | {F(info.Result.FinalEvalLoss)} |

            """);
        if (custom)
            card.Append(CultureInfo.InvariantCulture, $"""

                Prompt template:

                ```text
                {job.Template.CustomTemplate}
                ```

                """);
        card.Append(CultureInfo.InvariantCulture, $"""

            ## Use with PEFT

            ```python
            from transformers import AutoModelForCausalLM, AutoTokenizer
            from peft import PeftModel

            base = AutoModelForCausalLM.from_pretrained("{info.BaseModel}")
            model = PeftModel.from_pretrained(base, "path/to/this/folder")
            tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")
            ```

            loss.csv has the loss of every step; settings.json has every setting of the run.

            """);
        return card.ToString();
    }

    /// <summary>
    /// Folds every adapter into its base weight and writes an HF model folder: model.safetensors with the
    /// checkpoint's key names (no lora_ keys), config.json, generation_config.json and tokenizer files.
    /// The model stays merged (NF4 layers become dense); it is meant as the last use of the model.
    /// </summary>
    public static void WriteMerged(string folder, nn.Module model, IEnumerable<(string Name, LoraLinear Layer)> linears, string baseModelFolder)
    {
        foreach (var (_, layer) in linears)
        {
            if (layer.HasAdapter) layer.Merge();
            else layer.MakeDense();
        }
        Directory.CreateDirectory(folder);
        var tensors = model.state_dict()
            .Where(kv => !kv.Key.Contains(".lora_", StringComparison.Ordinal) && !kv.Key.Contains("weight_nf4", StringComparison.Ordinal)
                         && !kv.Key.Contains("weight_absmax", StringComparison.Ordinal))
            .ToDictionary(kv => kv.Key, kv => kv.Value);
        SafeTensors.Save(Path.Combine(folder, "model.safetensors"), tensors, new Dictionary<string, string> { ["format"] = "pt" });
        foreach (var file in TokenizerFiles.Append("config.json").Append("generation_config.json"))
        {
            string source = Path.Combine(baseModelFolder, file);
            if (File.Exists(source)) File.Copy(source, Path.Combine(folder, file), overwrite: true);
        }
    }
}
