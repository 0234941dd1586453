using System.Globalization;
using System.IO.Compression;
using System.Text;
using System.Text.Json;
using FineTune.Engine.Models;
using FineTune.Engine.Training;
using static TorchSharp.torch;

namespace FineTune.Engine.Adapters;

/// <summary>What the model card and settings.json say about a run.</summary>
public sealed record AdapterRunInfo(
    string BaseModel, int TrainRows, int ValidationRows, LoraSettings Lora, TrainingOptions Training,
    int MaxSeqLength, bool QLoRA, string Template, TrainingResult Result, DateTimeOffset FinishedAt);

/// <summary>
/// The downloadable result of a run: a PEFT adapter folder (adapter_config.json, adapter_model.safetensors)
/// with the base model's tokenizer files, README.md (model card), loss.csv and settings.json; and its zip.
/// Also the merged export: base + LoRA folded into one HF model folder.
/// </summary>
public static class AdapterExport
{
    /// <summary>Tokenizer files copied from the base model folder when present.</summary>
    public static readonly string[] TokenizerFiles =
    [
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt",
        "tokenizer.model", "qwen.tiktoken", "chat_template.jinja", "added_tokens.json",
    ];

    private static readonly JsonSerializerOptions Indented = new() { WriteIndented = true };

    public static void WriteFolder(string folder, IEnumerable<(string Name, LoraLinear Layer)> linears, string baseModelFolder, AdapterRunInfo info)
    {
        Directory.CreateDirectory(folder);
        PeftAdapter.Save(folder, linears, info.Lora, info.BaseModel);
        foreach (var file in TokenizerFiles)
        {
            string source = Path.Combine(baseModelFolder, file);
            if (File.Exists(source)) File.Copy(source, Path.Combine(folder, file), overwrite: true);
        }
        File.WriteAllText(Path.Combine(folder, "loss.csv"), LossCsv(info.Result.History), new UTF8Encoding(false));
        File.WriteAllText(Path.Combine(folder, "settings.json"), JsonSerializer.Serialize(Settings(info), Indented) + "\n", new UTF8Encoding(false));
        File.WriteAllText(Path.Combine(folder, "README.md"), ModelCard(info), new UTF8Encoding(false));
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

    public static string LossCsv(IEnumerable<StepRecord> history)
    {
        var csv = new StringBuilder("step,epoch,loss,learning_rate,grad_norm,eval_loss\n");
        foreach (var h in history)
            csv.Append(CultureInfo.InvariantCulture, $"{h.Step},{h.Epoch:0.####},{h.Loss:R},{h.LearningRate:R},{h.GradNorm:R},{(h.EvalLoss is double e ? e.ToString("R", CultureInfo.InvariantCulture) : "")}\n");
        return csv.ToString();
    }

    private static object Settings(AdapterRunInfo info) => new
    {
        base_model = info.BaseModel,
        train_rows = info.TrainRows,
        validation_rows = info.ValidationRows,
        qlora = info.QLoRA,
        template = info.Template,
        max_seq_length = info.MaxSeqLength,
        lora = new { r = info.Lora.Rank, lora_alpha = info.Lora.Alpha, lora_dropout = info.Lora.Dropout, target_modules = info.Lora.Targets, use_rslora = info.Lora.UseRsLora },
        training = new
        {
            epochs = info.Training.Epochs, learning_rate = info.Training.LearningRate, batch_size = info.Training.BatchSize,
            gradient_accumulation_steps = info.Training.GradientAccumulationSteps, weight_decay = info.Training.WeightDecay,
            max_grad_norm = info.Training.MaxGradNorm, lr_scheduler_type = info.Training.Schedule.ToString().ToLowerInvariant(),
            warmup_steps = info.Training.WarmupSteps, warmup_ratio = info.Training.WarmupRatio, seed = info.Training.Seed,
            layout = info.Training.Layout.ToString(),
        },
        steps = info.Result.StepsDone,
        total_steps = info.Result.TotalSteps,
        final_train_loss = info.Result.FinalTrainLoss,
        final_eval_loss = info.Result.FinalEvalLoss,
        finished_at = info.FinishedAt.ToString("O", CultureInfo.InvariantCulture),
    };

    public static string ModelCard(AdapterRunInfo info)
    {
        static string F(double? v) => v is double d ? d.ToString("0.####", CultureInfo.InvariantCulture) : "—";
        var t = info.Training;
        var card = new StringBuilder();
        card.Append(CultureInfo.InvariantCulture, $"""
            ---
            base_model: {info.BaseModel}
            library_name: peft
            tags:
            - lora
            {(info.QLoRA ? "- qlora\n" : "")}- finetune
            ---

            # LoRA adapter for {info.BaseModel}

            Trained with FineTune on {info.TrainRows} question–answer rows ({info.ValidationRows} more held out for validation), finished {info.FinishedAt:yyyy-MM-dd HH:mm} UTC.

            | setting | value |
            |---|---|
            | method | {(info.QLoRA ? "QLoRA (base in NF4, double quantization)" : "LoRA")} |
            | r / alpha / dropout | {info.Lora.Rank} / {F(info.Lora.Alpha)} / {F(info.Lora.Dropout)} |
            | target modules | {string.Join(", ", info.Lora.Targets)} |
            | epochs | {F(t.Epochs)} ({info.Result.StepsDone} of {info.Result.TotalSteps} optimizer steps) |
            | batch × accumulation | {t.BatchSize} × {t.GradientAccumulationSteps} |
            | learning rate | {t.LearningRate.ToString("G3", CultureInfo.InvariantCulture)} ({t.Schedule.ToString().ToLowerInvariant()} schedule) |
            | max length | {info.MaxSeqLength} tokens |
            | prompt template | {info.Template} |
            | final train loss | {F(info.Result.FinalTrainLoss)} |
            | final validation loss | {F(info.Result.FinalEvalLoss)} |

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
