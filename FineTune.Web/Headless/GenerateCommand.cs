using System.CommandLine;
using System.Text.Json;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Generation;
using FineTune.Engine.Hub;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;
using static FineTune.Web.Headless.CommandOptions;

namespace FineTune.Web.Headless;

/// <summary>
/// <c>generate --model &lt;folder|hub id&gt; --prompt TEXT [--raw] [--template chat|tutorial|TEXT]
/// [--greedy | --temperature T --top-p P [--top-k K]] [--max-new-tokens N] [--seed N] [--adapter &lt;zip|folder&gt;]</c>:
/// prints only the generated text on stdout, as it is generated. Bad arguments or an unreadable model: one line
/// on stderr and a non-zero exit code (2 for usage, 1 for everything else, 130 when interrupted); engine warnings on stderr.
/// Prompt formats: --raw (the text as is, BOS where the tokenizer adds one), chat (the model's chat template),
/// tutorial or a custom template with {instruction} (both as the train command formats prompts). Default: the
/// adapter's training template (its settings.json), else chat when the model has a chat template, else tutorial.
/// </summary>
public static class GenerateCommand
{
    public const string Name = "generate";

    public static Command Create(HeadlessConsole console)
    {
        var options = new Options();
        var command = options.Command();
        command.SetAction((parsed, cancellationToken) => RunAsync(options.Bind(parsed), console, cancellationToken));
        return command;
    }

    /// <summary>Runs the command; <paramref name="args"/> excludes the word "generate".</summary>
    public static Task<int> RunAsync(IReadOnlyList<string> args, TextWriter output, TextWriter error, CancellationToken cancellationToken = default, HubOptions? hub = null) =>
        HeadlessCli.RunAsync([Name, .. args], new HeadlessConsole(output, error) { Hub = hub ?? new HubOptions() }, cancellationToken);

    private static async Task<int> RunAsync(Arguments a, HeadlessConsole console, CancellationToken cancellationToken)
    {
        var (output, error) = (console.Output, console.Error);
        using var loggers = HeadlessCli.Loggers(console, Name);
        if (HeadlessCli.Backend(console, Name, loggers) is null) return 1;
        string? extracted = null;
        try
        {
            string folder = await ModelOption.ResolveAsync(a.Model, console.Hub, loggers, error, cancellationToken).ConfigureAwait(false);
            string? adapter = a.Adapter is null ? null : AdapterFolder(a.Adapter, out extracted);
            var tokenizer = TokenizerLoader.Load(folder);
            using var model = ModelLoader.Load(folder, new ModelLoadOptions { Logger = loggers.CreateLogger("FineTune.Models") });
            if (adapter is not null) PeftAdapter.Load(adapter, model.NamedLinears());
            var text = new TextGenerator(new Generator(model), tokenizer);
            var settings = a.Apply(text.DefaultSettings(folder));
            var promptIds = EncodePrompt(a, tokenizer, adapter);
            await foreach (string piece in text.StreamAsync(promptIds, settings, cancellationToken).ConfigureAwait(false))
            {
                await output.WriteAsync(piece).ConfigureAwait(false);
                await output.FlushAsync(cancellationToken).ConfigureAwait(false);
            }
            return 0;
        }
        catch (OperationCanceledException)
        {
            await error.WriteLineAsync("generate: interrupted").ConfigureAwait(false);
            return 130;
        }
        catch (Exception e) when (HeadlessCli.IsOneLineFailure(e))
        {
            await error.WriteLineAsync($"generate: {HeadlessCli.OneLine(e.Message)}").ConfigureAwait(false);
            return 1;
        }
        finally
        {
            if (extracted is not null) Directory.Delete(extracted, recursive: true);
        }
    }

    /// <summary>An adapter folder, or a zip (the app's download) extracted to a temporary folder.</summary>
    internal static string AdapterFolder(string adapter, out string? extracted)
    {
        extracted = null;
        if (Directory.Exists(adapter)) return adapter;
        if (!File.Exists(adapter)) throw new FileNotFoundException($"--adapter {adapter}: no such folder or zip file.");
        extracted = Directory.CreateTempSubdirectory("finetune-adapter-").FullName;
        AdapterArchive.Extract(adapter, extracted);
        // The app's zip is flat; a zip of the folder itself holds one folder with the files.
        string[] inner = Directory.GetDirectories(extracted);
        return File.Exists(Path.Combine(extracted, "adapter_config.json")) || inner.Length != 1 ? extracted : inner[0];
    }

    private static IReadOnlyList<int> EncodePrompt(Arguments options, ITextTokenizer tokenizer, string? adapter)
    {
        if (options.Raw) return tokenizer.Encode(options.Prompt, addSpecialTokens: true);
        var chat = ChatTemplate.ForTokenizer(tokenizer);
        string template = options.Template ?? TrainedTemplate(adapter) ?? (chat is not null ? "chat" : "tutorial");
        if (template == "chat" && chat is null)
            throw new NotSupportedException("this model has no chat template; use --template tutorial, --raw or a custom --template with {instruction}.");
        // The same PromptTemplate the train command uses, so a question reads exactly as it did in training.
        var prompt = PromptTemplate.Create(TemplateSettings(template), tokenizer);
        return prompt.EncodePrompt(new QaRow(options.Prompt, ""));
    }

    /// <summary>A run's template name as settings.json and --template write it: chat, tutorial or the custom text.</summary>
    internal static PromptTemplateSettings TemplateSettings(string template) => template switch
    {
        "chat" => new PromptTemplateSettings(PromptStyle.ModelChatTemplate),
        "tutorial" => new PromptTemplateSettings(PromptStyle.Tutorial),
        var custom => new PromptTemplateSettings(PromptStyle.Custom, WithOutputPlaceholder(custom.Replace("\\n", "\n", StringComparison.Ordinal))),
    };

    /// <summary>At inference a custom template may stop where the answer starts: "Q: {instruction}\nA: ".</summary>
    private static string WithOutputPlaceholder(string template) =>
        template.Contains("{output}", StringComparison.Ordinal) ? template : template + "{output}";

    /// <summary>The template an adapter was trained with (settings.json "template"), when it says.</summary>
    internal static string? TrainedTemplate(string? adapter)
    {
        string? path = adapter is null ? null : Path.Combine(adapter, "settings.json");
        if (path is null || !File.Exists(path)) return null;
        try
        {
            using var document = JsonDocument.Parse(File.ReadAllText(path));
            return document.RootElement.TryGetProperty("template", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString() : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    /// <summary>What `generate` was asked for.</summary>
    private sealed record Arguments(string Model, string Prompt)
    {
        public bool Raw { get; init; }
        public string? Template { get; init; }
        public bool Greedy { get; init; }
        public double? Temperature { get; init; }
        public double? TopP { get; init; }
        public int? TopK { get; init; }
        public int? MaxNewTokens { get; init; }
        public int? Seed { get; init; }
        public string? Adapter { get; init; }

        public GenerationSettings Apply(GenerationSettings defaults)
        {
            var settings = defaults;
            if (Greedy) settings = settings with { DoSample = false };
            else if (Temperature is not null || TopP is not null || TopK is not null)
                settings = settings with
                {
                    DoSample = true,
                    Temperature = Temperature ?? settings.Temperature,
                    TopP = TopP ?? settings.TopP,
                    TopK = TopK ?? settings.TopK,
                };
            if (MaxNewTokens is int max) settings = settings with { MaxNewTokens = max };
            if (Seed is int seed) settings = settings with { Seed = seed };
            settings.Validate();
            return settings;
        }
    }

    /// <summary>The command's options (one set per command, so validators are added once).</summary>
    private sealed class Options
    {
        private readonly Option<string> _model = ModelOption.Create();
        private readonly Option<string> _prompt = Text("--prompt", "The question (or, with --raw, the text to continue)", "text", required: true);
        private readonly Option<bool> _raw = Flag("--raw", "The prompt as it is (BOS where the tokenizer adds one), no template");
        private readonly Option<string> _template = Text("--template",
            "chat (the model's chat template), tutorial (### 指令：/### 回應：) or a custom template with {instruction}; " +
            "default: the adapter's training template, else chat where the model has one, else tutorial", "chat|tutorial|text");
        private readonly Option<bool> _greedy = Flag("--greedy", "Always the likeliest token (default: the model's generation_config.json)");
        private readonly Option<double?> _temperature = OptionalNumber("--temperature", "Sampling temperature", v => v > 0, "a number greater than 0");
        private readonly Option<double?> _topP = OptionalNumber("--top-p", "Nucleus sampling: the smallest set of tokens holding this probability", v => v is > 0 and <= 1, "a number in (0, 1]");
        private readonly Option<int?> _topK = OptionalInteger("--top-k", "Sample among the K likeliest tokens (0: off)", v => v >= 0, "0 (off) or a positive whole number");
        private readonly Option<int?> _maxNewTokens = OptionalInteger("--max-new-tokens", "Stop after this many tokens", v => v >= 1, "a whole number of at least 1");
        private readonly Option<int?> _seed = OptionalInteger("--seed", "Sampling seed, for a reproducible answer");
        private readonly Option<string> _adapter = Text("--adapter", "A LoRA adapter: the app's zip or a PEFT folder", "zip|folder");

        public Command Command()
        {
            var command = new Command(Name, "Prints the model's answer (with a LoRA adapter, if given) on stdout as it is generated; nothing else goes to stdout")
            {
                _model, _prompt, _raw, _template, _greedy, _temperature, _topP, _topK, _maxNewTokens, _seed, _adapter,
            };
            command.Validators.Add(result =>
            {
                if (result.GetResult(_raw) is not null && result.GetResult(_template) is not null)
                    result.AddError("--raw and --template exclude each other.");
                if (result.GetResult(_greedy) is not null && (result.GetResult(_temperature) ?? result.GetResult(_topP) ?? result.GetResult(_topK)) is not null)
                    result.AddError("--greedy excludes --temperature, --top-p and --top-k.");
            });
            return command;
        }

        public Arguments Bind(ParseResult parsed) => new(parsed.GetValue(_model)!, parsed.GetValue(_prompt)!)
        {
            Raw = parsed.GetValue(_raw),
            Greedy = parsed.GetValue(_greedy),
            Template = parsed.GetValue(_template),
            Temperature = parsed.GetValue(_temperature),
            TopP = parsed.GetValue(_topP),
            TopK = parsed.GetValue(_topK),
            MaxNewTokens = parsed.GetValue(_maxNewTokens),
            Seed = parsed.GetValue(_seed),
            Adapter = parsed.GetValue(_adapter),
        };
    }
}
