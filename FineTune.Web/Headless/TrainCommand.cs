using System.Globalization;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;
using FineTune.Engine.Training;
using FineTune.Web.Features.Data;
using Microsoft.Extensions.Logging;

namespace FineTune.Web.Headless;

/// <summary>A token cancelled by Ctrl+C (the first press; the process then ends after the current step).</summary>
public static class CancelOnCtrlC
{
    public static CancellationToken Token
    {
        get
        {
            var source = new CancellationTokenSource();
            Console.CancelKeyPress += (_, e) =>
            {
                if (source.IsCancellationRequested) return;
                e.Cancel = true;
                source.Cancel();
            };
            return source.Token;
        }
    }
}

/// <summary>Bad command-line input: the message says which option and what to write instead.</summary>
public sealed class CommandLineException(string message) : ArgumentException(message);

/// <summary>
/// `train --model FOLDER --data FILE --output ZIP [options]`: LoRA/QLoRA training without the web server,
/// one progress line per logging step, the PEFT adapter folder beside the zip.
/// Exit codes: 0 done, 2 bad input, 3 out of memory, 130 cancelled (Ctrl+C), 1 other failure.
/// </summary>
public static class TrainCommand
{
    public const string Usage = """
        Usage: train --model <model folder> --data <file.xlsx|csv|tsv|jsonl|json> --output <adapter.zip> [options]
          --epochs N          training epochs (3)                 --lr X              learning rate (2e-4)
          --rank R            LoRA r (16)                         --alpha A           lora_alpha (32)
          --dropout D         lora_dropout (0.05)                 --targets a,b,...   target modules (q_proj,k_proj,v_proj,o_proj)
          --qlora             base model in NF4 (4-bit)           --max-length L      max tokens per row (1024)
          --no-double-quant   with --qlora: keep the NF4 block scales in fp32 (default: double quantization, as the tutorial)
          --batch B           rows per batch (1)                  --accum G           gradient accumulation (4)
          --save-steps S      checkpoint every S steps (0: none)  --save-limit K      checkpoints kept (2)
          --template T        tutorial (### 指令：/### 回應：), chat (the model's chat template), or a custom
                              template with {instruction} and {output} (and {input}, {system}); \n for a new line
          --whole-text        loss on prompt and answer (default: answer only)
          --warmup-ratio R    (0)   --warmup-steps N (0)   --schedule linear|cosine|constant (linear)
          --seed N (42)   --logging-steps N (1)   --validation F (0.1, used from 20 rows)   --layout packed|grouped
          --resume DIR|auto   continue from a checkpoint (auto: the newest in the output's checkpoints folder)
          --init-adapter DIR  start from these adapter weights instead of fresh ones (PEFT folder)
          --merged DIR        also write base + LoRA merged as an HF model folder
          --gradient-checkpointing auto|on|off   recompute layer activations in backward to save memory
                              (auto: on with --qlora, as PEFT's prepare_model_for_kbit_training)
        """;

    public static int Run(string[] args, TextWriter output, TextWriter error, CancellationToken cancellationToken = default, ILoggerFactory? loggers = null)
    {
        using var lines = loggers is null ? LineLoggerProvider.Factory(output) : null;
        loggers ??= lines!;
        try
        {
            var options = TrainCommandOptions.Parse(args);
            return Execute(options, output, loggers, cancellationToken);
        }
        catch (Exception e) when (e is CommandLineException or DataImportException or ArgumentException or FileNotFoundException
                                       or DirectoryNotFoundException or ModelFormatException or UnsupportedModelException or AdapterFormatException or CheckpointException
                                       or LoraTargetNotFoundException or InvalidDataException or NotSupportedException or PromptTemplateException)
        {
            error.WriteLine($"train: {e.Message}");
            if (e is CommandLineException) error.WriteLine(Usage);
            return 2;
        }
        catch (TrainingOutOfMemoryException e)
        {
            error.WriteLine($"train: {e.Message}");
            return 3;
        }
        catch (OperationCanceledException)
        {
            error.WriteLine("train: cancelled; the newest checkpoint (if any) can be resumed with --resume auto.");
            return 130;
        }
        catch (Exception e) when (e is System.Runtime.InteropServices.ExternalException or InvalidOperationException or IOException or UnauthorizedAccessException)
        {
            // libtorch errors, unwritable output folders...: one line for the user, the details for whoever reads the log.
            error.WriteLine($"train: failed: {e.Message}");
            loggers.CreateLogger("FineTune.Train").LogError(e, "train failed");
            return 1;
        }
    }

    private static int Execute(TrainCommandOptions o, TextWriter output, ILoggerFactory loggers, CancellationToken cancellationToken)
    {
        var backend = ComputeBackend.Initialize(loggers.CreateLogger("FineTune.Backend"));
        output.WriteLine($"backend: {backend.Description}");

        // Data: the web app's importer (Excel, CSV/TSV with encoding detection, JSONL/JSON).
        var importer = new DataImporter(new ExcelTableReader(loggers.CreateLogger<ExcelTableReader>()));
        var file = importer.Parse(File.ReadAllBytes(o.Data), Path.GetFileName(o.Data));
        var import = importer.Build(file, new ImportSettings(DataImporter.GuessSheet(file), MaxSeqLength: o.MaxLength));
        var rows = import.UsableRows;
        var conversations = import.UsableConversations;
        if (rows.Count == 0 && conversations.Count == 0)
            throw new CommandLineException(import.Chat is null
                ? $"'{o.Data}' has no usable question–answer rows (each row needs a question and an answer)."
                : $"'{o.Data}' has no usable conversations (each needs known roles, no empty turn, and the assistant's turn last).");
        if (import.Chat is { } chat)
        {
            output.WriteLine($"data: {conversations.Count} conversations ({chat.Layout}) from {Path.GetFileName(o.Data)}");
            var left = import.Conversations.Where(c => !c.IsUsable).ToList();
            if (left.Count > 0)
                output.WriteLine($"left out: {left.Count} conversations ({string.Join("; ", left.Take(10).Select(c => $"row {c.SourceRow}: {string.Join(", ", c.Issues.Where(i => i.IsBlocking).Select(i => i.Kind).Distinct())}"))})");
        }
        else output.WriteLine($"data: {rows.Count} rows from {Path.GetFileName(o.Data)}");

        string adapterFolder = AdapterFolder(o.Output);
        // A chat dataset is written with the model's chat template unless --template says otherwise.
        var job = o.ToJob(rows) with { Conversations = conversations };
        if (import.Chat is not null && o.Template is null) job = job with { Template = new PromptTemplateSettings(PromptStyle.ModelChatTemplate) };
        var outcome = new FineTunePipeline(loggers).Run(job, new LineProgress(output), cancellationToken);
        AdapterExport.Zip(adapterFolder, o.Output);
        output.WriteLine($"adapter: {o.Output} (folder {adapterFolder})");
        if (outcome.MergedFolder is not null) output.WriteLine($"merged model: {outcome.MergedFolder}");
        return 0;
    }

    /// <summary>The adapter folder written beside the zip: "out/adapter.zip" → "out/adapter".</summary>
    public static string AdapterFolder(string zipPath) =>
        Path.Combine(Path.GetDirectoryName(Path.GetFullPath(zipPath))!, Path.GetFileNameWithoutExtension(zipPath));

    private sealed class LineProgress(TextWriter output) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress p)
        {
            if (p.Loss is double loss)
            {
                var line = string.Create(CultureInfo.InvariantCulture,
                    $"step {p.Step}/{p.TotalSteps} epoch {p.Epoch:0.00} loss {loss:0.0000} lr {p.LearningRate:0.###e+0} grad_norm {p.GradNorm:0.000} tok/s {p.TokensPerSecond:0} elapsed {p.Elapsed:hh\\:mm\\:ss} eta {p.Eta:hh\\:mm\\:ss}");
                if (p.EvalLoss is double e) line += string.Create(CultureInfo.InvariantCulture, $" eval_loss {e:0.0000}");
                if (p.GpuMemoryBytes is long m) line += string.Create(CultureInfo.InvariantCulture, $" gpu_mem {m / 1e9:0.00}GB");
                output.WriteLine(line);
            }
            if (p.CheckpointPath is not null) output.WriteLine($"checkpoint: {p.CheckpointPath}");
        }
    }
}

/// <summary>The parsed command line of `train`.</summary>
public sealed record TrainCommandOptions(
    string Model, string Data, string Output, LoraSettings Lora, TrainingOptions Training, int MaxLength, bool QLoRA,
    string? Template, bool WholeText, double ValidationFraction, string? Resume, string? InitAdapter, string? Merged)
{
    private static readonly HashSet<string> Flags = ["--qlora", "--whole-text", "--no-double-quant"];

    /// <summary>bitsandbytes' bnb_4bit_use_double_quant for the NF4 base (--no-double-quant turns it off).</summary>
    public bool DoubleQuantization { get; init; } = true;

    /// <summary>The engine's job for these options: the adapter folder beside the zip, checkpoints beside that.</summary>
    public FineTuneJob ToJob(IReadOnlyList<QaRow> rows)
    {
        string adapterFolder = TrainCommand.AdapterFolder(Output);
        string checkpoints = adapterFolder + ".checkpoints";
        return new FineTuneJob
        {
            ModelFolder = Model,
            Rows = rows,
            Template = Template switch
            {
                null or "tutorial" => new PromptTemplateSettings(PromptStyle.Tutorial),
                "chat" => new PromptTemplateSettings(PromptStyle.ModelChatTemplate),
                var custom => new PromptTemplateSettings(PromptStyle.Custom, custom.Replace("\\n", "\n", StringComparison.Ordinal)),
            },
            MaxSeqLength = MaxLength,
            AnswerOnlyLoss = !WholeText,
            ValidationFraction = ValidationFraction,
            Lora = Lora,
            Training = Training,
            FourBit = QLoRA,
            DoubleQuantization = DoubleQuantization,
            OutputFolder = adapterFolder,
            CheckpointsFolder = checkpoints,
            ResumeFrom = Resume switch
            {
                null => null,
                "auto" => Checkpoints.Latest(checkpoints) ?? throw new CommandLineException($"--resume auto: there is no checkpoint in '{checkpoints}' yet."),
                var folder => folder,
            },
            InitAdapter = InitAdapter,
            MergedFolder = Merged,
        };
    }

    public static TrainCommandOptions Parse(string[] args)
    {
        var values = new Dictionary<string, string>(StringComparer.Ordinal);
        var flags = new HashSet<string>(StringComparer.Ordinal);
        int start = args.Length > 0 && args[0] == "train" ? 1 : 0;
        for (int i = start; i < args.Length; i++)
        {
            string a = args[i];
            if (!a.StartsWith("--", StringComparison.Ordinal)) throw new CommandLineException($"Unexpected argument '{a}'. Options start with --.");
            if (Flags.Contains(a)) { flags.Add(a); continue; }
            if (i + 1 >= args.Length) throw new CommandLineException($"{a} needs a value.");
            values[a] = args[++i];
        }
        string Required(string name) => values.TryGetValue(name, out var v) && !string.IsNullOrWhiteSpace(v)
            ? v : throw new CommandLineException($"{name} is required.");
        string? Optional(string name) => values.GetValueOrDefault(name);
        double Number(string name, double fallback)
        {
            if (!values.TryGetValue(name, out var v)) return fallback;
            return double.TryParse(v, NumberStyles.Float, CultureInfo.InvariantCulture, out double d) && double.IsFinite(d)
                ? d : throw new CommandLineException($"{name} must be a number; got '{v}'.");
        }
        int Integer(string name, int fallback)
        {
            if (!values.TryGetValue(name, out var v)) return fallback;
            return int.TryParse(v, NumberStyles.Integer, CultureInfo.InvariantCulture, out int n)
                ? n : throw new CommandLineException($"{name} must be a whole number; got '{v}'.");
        }
        var known = new HashSet<string>(["--model", "--data", "--output", "--epochs", "--lr", "--rank", "--alpha", "--dropout", "--targets",
            "--max-length", "--batch", "--accum", "--save-steps", "--save-limit", "--template", "--warmup-ratio", "--warmup-steps",
            "--schedule", "--seed", "--logging-steps", "--validation", "--layout", "--resume", "--init-adapter", "--merged", "--gradient-checkpointing"]);
        var unknown = values.Keys.FirstOrDefault(k => !known.Contains(k));
        if (unknown is not null) throw new CommandLineException($"Unknown option {unknown}.");

        string model = Required("--model");
        if (!Directory.Exists(model)) throw new CommandLineException($"--model '{model}' is not a folder. Give a Hugging Face model folder (config.json, *.safetensors, tokenizer.json).");
        if (!File.Exists(Path.Combine(model, "config.json"))) throw new CommandLineException($"--model '{model}' has no config.json; it is not a Hugging Face model folder.");
        string data = Required("--data");
        if (!File.Exists(data)) throw new CommandLineException($"--data '{data}' does not exist.");
        string output = Required("--output");
        if (!output.EndsWith(".zip", StringComparison.OrdinalIgnoreCase)) throw new CommandLineException($"--output must name a .zip file; got '{output}'.");

        var lora = new LoraSettings(
            Integer("--rank", 16), Number("--alpha", 32), Number("--dropout", 0.05),
            Optional("--targets")?.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries));
        var schedule = Optional("--schedule") switch
        {
            null or "linear" => LearningRateScheduleKind.Linear,
            "cosine" => LearningRateScheduleKind.Cosine,
            "constant" => LearningRateScheduleKind.Constant,
            var s => throw new CommandLineException($"--schedule must be linear, cosine or constant; got '{s}'."),
        };
        var layout = Optional("--layout") switch
        {
            null or "packed" => BatchLayout.Packed,
            "grouped" => BatchLayout.LengthGrouped,
            var s => throw new CommandLineException($"--layout must be packed or grouped; got '{s}'."),
        };
        bool? checkpointing = Optional("--gradient-checkpointing") switch
        {
            null or "auto" => null,
            "on" => true,
            "off" => false,
            var s => throw new CommandLineException($"--gradient-checkpointing must be auto, on or off; got '{s}'."),
        };
        var training = new TrainingOptions
        {
            Epochs = Number("--epochs", 3), LearningRate = Number("--lr", 2e-4), BatchSize = Integer("--batch", 1),
            GradientAccumulationSteps = Integer("--accum", 4), SaveSteps = Integer("--save-steps", 0), SaveTotalLimit = Integer("--save-limit", 2),
            WarmupRatio = Number("--warmup-ratio", 0), WarmupSteps = Integer("--warmup-steps", 0), Schedule = schedule,
            Seed = Integer("--seed", 42), LoggingSteps = Integer("--logging-steps", 1), Layout = layout,
            GradientCheckpointing = checkpointing,
        };
        try
        {
            lora.Validate();
            training.Validate();
        }
        catch (ArgumentOutOfRangeException e)
        {
            throw new CommandLineException(e.Message);
        }
        int maxLength = Integer("--max-length", 1024);
        if (maxLength < 16) throw new CommandLineException($"--max-length must be at least 16 tokens; got {maxLength}.");
        double validation = Number("--validation", 0.1);
        if (validation < 0 || validation >= 1) throw new CommandLineException($"--validation must be in [0, 1); got {validation}.");
        string? init = Optional("--init-adapter");
        if (init is not null && !File.Exists(Path.Combine(init, PeftAdapter.ConfigFile))) throw new CommandLineException($"--init-adapter '{init}' has no {PeftAdapter.ConfigFile}.");
        return new TrainCommandOptions(model, data, output, lora, training, maxLength, flags.Contains("--qlora"), Optional("--template"),
            flags.Contains("--whole-text"), validation, Optional("--resume"), init, Optional("--merged"))
        {
            DoubleQuantization = !flags.Contains("--no-double-quant"),
        };
    }
}
