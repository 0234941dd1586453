using System.CommandLine;
using System.Globalization;
using FineTune.Engine.Adapters;
using FineTune.Engine.Data;
using FineTune.Engine.Hub;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;
using FineTune.Engine.Training;
using FineTune.Web.Features.Data;
using FineTune.Web.Features.Settings;
using Microsoft.Extensions.Logging;
using static FineTune.Web.Headless.CommandOptions;

namespace FineTune.Web.Headless;

/// <summary>
/// `train --model FOLDER|HUB_ID --data FILE --output ZIP [options]`: LoRA/QLoRA training without the web server, one
/// progress line per logging step, the PEFT adapter folder beside the zip. The options bind to the wizard's
/// <see cref="TrainingSettings"/>, whose <see cref="TrainingSettings.ToFineTuneJob"/> is the one mapping to the engine.
/// Exit codes: 0 done, 2 bad input, 3 out of memory, 130 cancelled (Ctrl+C), 1 other failure.
/// </summary>
public static class TrainCommand
{
    public const string Name = "train";

    /// <summary>What `train` was asked for: the run's settings, as the wizard holds them, and what only the command line says.</summary>
    public sealed record Arguments(TrainingSettings Settings, string Data, string Output, string? Resume, string? InitAdapter, string? Merged);

    public static Command Create(HeadlessConsole console)
    {
        var options = new Options();
        var command = options.Command();
        command.SetAction((parsed, cancellationToken) => Task.FromResult(Run(options.Bind(parsed), console, cancellationToken)));
        return command;
    }

    /// <summary>The options bound as `train` runs with them, without running (no file is read); a usage error throws <see cref="ArgumentException"/>.</summary>
    public static Arguments Parse(IReadOnlyList<string> args)
    {
        var options = new Options();
        var parsed = options.Command().Parse(args is [Name, ..] ? [.. args.Skip(1)] : args);
        return parsed.Errors.Count == 0 ? options.Bind(parsed) : throw new ArgumentException(parsed.Errors[0].Message);
    }

    /// <summary>Runs `train` with <paramref name="args"/> (with or without the word "train" first).</summary>
    public static int Run(IReadOnlyList<string> args, TextWriter output, TextWriter error, CancellationToken cancellationToken = default, HubOptions? hub = null) =>
        HeadlessCli.RunAsync(args is [Name, ..] ? args : [Name, .. args], new HeadlessConsole(output, error) { Hub = hub ?? new HubOptions() }, cancellationToken)
            .GetAwaiter().GetResult();

    /// <summary>The command's options (one set per command, so validators are added once).</summary>
    private sealed class Options
    {
        private readonly Option<string> _model = ModelOption.Create();
        private readonly Option<string> _data = Text("--data", "The question–answer rows: .xlsx, .csv/.tsv (encoding detected), .jsonl or .json", "file", required: true);
        private readonly Option<string> _output = Text("--output", "The adapter zip to write; the PEFT adapter folder is written beside it (out/adapter.zip → out/adapter)", "adapter.zip", required: true);
        private readonly Option<double> _epochs = Number("--epochs", "Training epochs (a fraction stops part-way)", 3, v => v > 0, "a number above 0");
        private readonly Option<double> _learningRate = Number("--lr", "Peak learning rate", 2e-4);
        private readonly Option<int> _rank = Integer("--rank", "LoRA r", 16);
        private readonly Option<double> _alpha = Number("--alpha", "lora_alpha (the update is scaled by alpha / r)", 32);
        private readonly Option<double> _dropout = Number("--dropout", "lora_dropout", 0.05);
        private readonly Option<string> _targets = Text("--targets", "LoRA target modules, comma-separated [default: q_proj,k_proj,v_proj,o_proj]", "a,b,...");
        private readonly Option<bool> _qlora = Flag("--qlora", "Base model in NF4 (4-bit), the tutorial's QLoRA");
        private readonly Option<bool> _noDoubleQuant = Flag("--no-double-quant", "With --qlora: keep the NF4 block scales in fp32 (default: double quantization, as the tutorial)");
        private readonly Option<int> _maxLength = Integer("--max-length", "Max tokens per row", 1024, v => v >= 16, "a whole number of at least 16");
        private readonly Option<int> _batch = Integer("--batch", "Rows per batch", 1);
        private readonly Option<int> _accumulation = Integer("--accum", "Gradient accumulation steps", 4);
        private readonly Option<int> _saveSteps = Integer("--save-steps", "A checkpoint every S optimizer steps (0: none)", 0);
        private readonly Option<int> _saveLimit = Integer("--save-limit", "Checkpoints kept", 2);
        private readonly Option<string> _template = Text("--template",
            "tutorial (### 指令：/### 回應：), chat (the model's chat template), or a custom template with {instruction} and {output} " +
            "(and {input}, {system}); \\n for a new line [default: tutorial]", "tutorial|chat|text");
        private readonly Option<bool> _wholeText = Flag("--whole-text", "Loss on prompt and answer (default: the answer only)");
        private readonly Option<double> _warmupRatio = Number("--warmup-ratio", "Share of the optimizer steps warming the learning rate up", 0);
        private readonly Option<int> _warmupSteps = Integer("--warmup-steps", "Warm-up in optimizer steps (wins over --warmup-ratio)", 0);
        private readonly Option<LearningRateScheduleKind> _schedule = Choice("--schedule", "The learning-rate schedule after warm-up",
            new Dictionary<string, LearningRateScheduleKind>
            {
                ["linear"] = LearningRateScheduleKind.Linear, ["cosine"] = LearningRateScheduleKind.Cosine, ["constant"] = LearningRateScheduleKind.Constant,
            }, "linear");
        private readonly Option<int> _seed = Integer("--seed", "Seed of the adapter's initialization, dropout and shuffling", 42);
        private readonly Option<int> _loggingSteps = Integer("--logging-steps", "A progress line every N optimizer steps", 1);
        private readonly Option<double> _validation = Number("--validation", "Share of the rows kept aside for eval loss (used from 20 rows)", 0.1, v => v is >= 0 and < 1, "a number in [0, 1)");
        private readonly Option<BatchLayout> _layout = Choice("--layout", "packed: a batch's rows in one sequence (no padding); grouped: rows of similar length, padded",
            new Dictionary<string, BatchLayout> { ["packed"] = BatchLayout.Packed, ["grouped"] = BatchLayout.LengthGrouped }, "packed");
        private readonly Option<string> _resume = Text("--resume", "Continue from a checkpoint folder (auto: the newest in the output's checkpoints folder)", "folder|auto");
        private readonly Option<string> _initAdapter = Text("--init-adapter", "Start from these adapter weights instead of fresh ones (a PEFT folder)", "folder");
        private readonly Option<string> _merged = Text("--merged", "Also write base + LoRA merged as a Hugging Face model folder", "folder");
        private readonly Option<Toggle> _gradientCheckpointing = Choice("--gradient-checkpointing",
            "Recompute layer activations in backward to save memory (auto: only when the run would not fit the GPU without it; on the CPU, on with --qlora)",
            new Dictionary<string, Toggle> { ["auto"] = Toggle.Auto, ["on"] = Toggle.On, ["off"] = Toggle.Off }, "auto");

        /// <summary>auto/on/off (not a bool?: System.CommandLine lets a bool option take only true/false after it).</summary>
        private enum Toggle { Auto, On, Off }

        public Command Command()
        {
            _data.Validators.Add(r =>
            {
                if (r.Tokens.Count > 0 && !File.Exists(r.Tokens[^1].Value)) r.AddError($"--data '{r.Tokens[^1].Value}' does not exist.");
            });
            _output.Validators.Add(r =>
            {
                if (r.Tokens.Count > 0 && !r.Tokens[^1].Value.EndsWith(".zip", StringComparison.OrdinalIgnoreCase))
                    r.AddError($"--output must name a .zip file; got '{r.Tokens[^1].Value}'.");
            });
            _initAdapter.Validators.Add(r =>
            {
                if (r.Tokens.Count > 0 && !File.Exists(Path.Combine(r.Tokens[^1].Value, PeftAdapter.ConfigFile)))
                    r.AddError($"--init-adapter '{r.Tokens[^1].Value}' has no {PeftAdapter.ConfigFile}.");
            });
            return new Command(Name, "LoRA/QLoRA fine-tuning without the web app: a progress line per logging step, the PEFT adapter and its zip at the end")
            {
                _model, _data, _output, _epochs, _learningRate, _rank, _alpha, _dropout, _targets, _qlora, _noDoubleQuant, _maxLength, _batch,
                _accumulation, _saveSteps, _saveLimit, _template, _wholeText, _warmupRatio, _warmupSteps, _schedule, _seed, _loggingSteps,
                _validation, _layout, _resume, _initAdapter, _merged, _gradientCheckpointing,
            };
        }

        /// <summary>The command line as the wizard's settings (the same defaults the help lists).</summary>
        public Arguments Bind(ParseResult parsed)
        {
            string model = parsed.GetValue(_model)!;
            string? template = parsed.GetValue(_template);
            var settings = new TrainingSettings
            {
                Source = ModelReference.IsFolder(model) ? ModelSource.Local : ModelSource.Hub,
                Model = model,
                LoraR = parsed.GetValue(_rank),
                LoraAlpha = parsed.GetValue(_alpha),
                LoraDropout = parsed.GetValue(_dropout),
                TargetModules = parsed.GetValue(_targets) is { } targets
                    ? [.. targets.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries)]
                    : [.. LoraSettings.DefaultTargetModules],
                Epochs = parsed.GetValue(_epochs),
                BatchSize = parsed.GetValue(_batch),
                GradientAccumulationSteps = parsed.GetValue(_accumulation),
                LearningRate = parsed.GetValue(_learningRate),
                WarmupRatio = parsed.GetValue(_warmupRatio),
                WarmupSteps = parsed.GetValue(_warmupSteps),
                Schedule = parsed.GetValue(_schedule),
                Layout = parsed.GetValue(_layout),
                GradientCheckpointing = parsed.GetValue(_gradientCheckpointing) switch { Toggle.On => true, Toggle.Off => false, _ => null },
                MaxSeqLength = parsed.GetValue(_maxLength),
                LoggingSteps = parsed.GetValue(_loggingSteps),
                SaveSteps = parsed.GetValue(_saveSteps),
                SaveTotalLimit = parsed.GetValue(_saveLimit),
                EvalFraction = parsed.GetValue(_validation),
                AnswerOnlyLoss = !parsed.GetValue(_wholeText),
                PromptTemplate = template switch
                {
                    null or "tutorial" => PromptStyle.Tutorial,
                    "chat" => PromptStyle.ModelChatTemplate,
                    _ => PromptStyle.Custom,
                },
                CustomTemplate = template is null or "tutorial" or "chat" ? null : template.Replace("\\n", "\n", StringComparison.Ordinal),
                Quantization = parsed.GetValue(_qlora) ? Quantization.Nf4 : Quantization.None,
                DoubleQuantization = !parsed.GetValue(_noDoubleQuant),
                Seed = parsed.GetValue(_seed),
            };
            return new Arguments(settings, parsed.GetValue(_data)!, parsed.GetValue(_output)!,
                parsed.GetValue(_resume), parsed.GetValue(_initAdapter), parsed.GetValue(_merged));
        }
    }

    private static int Run(Arguments a, HeadlessConsole console, CancellationToken cancellationToken)
    {
        try
        {
            // What only the engine knows to check (rank ≥ 1, dropout < 1, accumulation ≥ 1...), still a usage error.
            a.Settings.ToLoraSettings().Validate();
            a.Settings.ToTrainingOptions().Validate();
        }
        catch (ArgumentOutOfRangeException e)
        {
            return HeadlessCli.Usage(console, Name, e.Message);
        }

        var (output, error) = (console.Output, console.Error);
        using var loggers = HeadlessCli.Loggers(console, Name);
        if (HeadlessCli.Backend(console, Name, loggers) is null) return 1;
        try
        {
            return Execute(a, console, loggers, cancellationToken);
        }
        catch (Exception e) when (e is DataImportException or ArgumentException or FileNotFoundException
                                       or DirectoryNotFoundException or ModelFormatException or UnsupportedModelException or AdapterFormatException
                                       or CheckpointException or LoraTargetNotFoundException or InvalidDataException or NotSupportedException
                                       or PromptTemplateException)
        {
            error.WriteLine($"train: {HeadlessCli.OneLine(e.Message)}");
            return HeadlessCli.UsageError;
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
        catch (Exception e) when (e is HubException or HttpRequestException or System.Runtime.InteropServices.ExternalException
                                       or InvalidOperationException or IOException or UnauthorizedAccessException)
        {
            // libtorch errors, unwritable output folders, an unreachable Hub...: one line for the user, the details at debug level.
            error.WriteLine($"train: failed: {HeadlessCli.OneLine(e.Message)}");
            loggers.CreateLogger("FineTune.Train").LogDebug(e, "train failed");
            return 1;
        }
    }

    private static int Execute(Arguments a, HeadlessConsole console, ILoggerFactory loggers, CancellationToken cancellationToken)
    {
        var output = console.Output;
        // Data: the web app's importer (Excel, CSV/TSV with encoding detection, JSONL/JSON).
        var importer = new DataImporter(new ExcelTableReader(loggers.CreateLogger<ExcelTableReader>()));
        var file = importer.Parse(File.ReadAllBytes(a.Data), Path.GetFileName(a.Data));
        var import = importer.Build(file, new ImportSettings(DataImporter.GuessSheet(file), MaxSeqLength: a.Settings.MaxSeqLength));
        var rows = import.UsableRows;
        var conversations = import.UsableConversations;
        if (rows.Count == 0 && conversations.Count == 0)
            throw new InvalidDataException(import.Chat is null
                ? $"'{a.Data}' has no usable question–answer rows (each row needs a question and an answer)."
                : $"'{a.Data}' has no usable conversations (each needs known roles, no empty turn, and the assistant's turn last).");
        if (import.Chat is { } chat)
        {
            output.WriteLine($"data: {conversations.Count} conversations ({chat.Layout}) from {Path.GetFileName(a.Data)}");
            var left = import.Conversations.Where(c => !c.IsUsable).ToList();
            if (left.Count > 0)
                output.WriteLine($"left out: {left.Count} conversations ({string.Join("; ", left.Take(10).Select(c => $"row {c.SourceRow}: {string.Join(", ", c.Issues.Where(i => i.IsBlocking).Select(i => i.Kind).Distinct())}"))})");
        }
        else output.WriteLine($"data: {rows.Count} rows from {Path.GetFileName(a.Data)}");

        string model = ModelOption.ResolveAsync(a.Settings.Model, console.Hub, loggers, output, cancellationToken).GetAwaiter().GetResult();
        string adapterFolder = AdapterFolder(a.Output);
        string checkpoints = adapterFolder + ".checkpoints";
        var job = a.Settings.ToFineTuneJob(model, rows, adapterFolder, checkpoints) with
        {
            Conversations = conversations,
            ResumeFrom = a.Resume switch
            {
                null => null,
                "auto" => Checkpoints.Latest(checkpoints) ?? throw new ArgumentException($"--resume auto: there is no checkpoint in '{checkpoints}' yet."),
                var folder => folder,
            },
            InitAdapter = a.InitAdapter,
            MergedFolder = a.Merged,
        };
        // Conversations are written the way the model chats unless a custom layout is asked for (the tutorial's holds one
        // exchange), as the wizard does when a chat file is loaded.
        if (import.Chat is not null && a.Settings.PromptTemplate == PromptStyle.Tutorial)
            job = job with { Template = new PromptTemplateSettings(PromptStyle.ModelChatTemplate) };
        var outcome = new FineTunePipeline(loggers).Run(job, new LineProgress(output), cancellationToken);
        AdapterExport.Zip(adapterFolder, a.Output);
        output.WriteLine($"adapter: {a.Output} (folder {adapterFolder})");
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
