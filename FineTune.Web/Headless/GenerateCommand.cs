using System.Globalization;
using System.Text.Json;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Generation;
using FineTune.Engine.Hub;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;

namespace FineTune.Web.Headless;

/// <summary>
/// <c>generate --model &lt;folder|hub id&gt; --prompt TEXT [--raw] [--template chat|tutorial|TEXT]
/// [--greedy | --temperature T --top-p P [--top-k K]] [--max-new-tokens N] [--seed N] [--adapter &lt;zip|folder&gt;]</c>:
/// prints only the generated text on stdout, as it is generated. Bad arguments or an unreadable model: one line
/// on stderr and a non-zero exit code (2 for usage, 1 for everything else, 130 when interrupted).
/// Prompt formats: --raw (the text as is, BOS where the tokenizer adds one), chat (the model's chat template),
/// tutorial or a custom template with {instruction} (both as the train command formats prompts). Default: the
/// adapter's training template (its settings.json), else chat when the model has a chat template, else tutorial.
/// </summary>
public static class GenerateCommand
{
    public const string Name = "generate";

    public const string Usage =
        "usage: generate --model <folder|hub id> --prompt TEXT [--raw] [--template chat|tutorial|TEXT] " +
        "[--greedy | --temperature T --top-p P [--top-k K]] [--max-new-tokens N] [--seed N] [--adapter <zip|folder>]";

    /// <summary>Runs on the console (Ctrl+C stops generation); <paramref name="args"/> excludes the word "generate".</summary>
    public static int Run(string[] args)
    {
        using var cancel = new CancellationTokenSource();
        ConsoleCancelEventHandler onCancel = (_, e) =>
        {
            e.Cancel = true;
            cancel.Cancel();
        };
        Console.CancelKeyPress += onCancel;
        try
        {
            return RunAsync(args, Console.Out, Console.Error, cancel.Token).GetAwaiter().GetResult();
        }
        finally
        {
            Console.CancelKeyPress -= onCancel;
        }
    }

    /// <summary>Runs the command; <paramref name="args"/> excludes the word "generate".</summary>
    public static async Task<int> RunAsync(IReadOnlyList<string> args, TextWriter output, TextWriter error, CancellationToken cancellationToken = default)
    {
        Options options;
        try
        {
            options = Options.Parse(args);
        }
        catch (UsageException e)
        {
            await error.WriteLineAsync($"generate: {e.Message}").ConfigureAwait(false);
            await error.WriteLineAsync(Usage).ConfigureAwait(false);
            return 2;
        }

        string? extracted = null;
        try
        {
            string folder = await ResolveModelFolderAsync(options.Model, cancellationToken).ConfigureAwait(false);
            string? adapter = options.Adapter is null ? null : AdapterFolder(options.Adapter, out extracted);
            ComputeBackend.Initialize();
            var tokenizer = TokenizerLoader.Load(folder);
            using var model = ModelLoader.Load(folder);
            if (adapter is not null) PeftAdapter.Load(adapter, model.NamedLinears());
            var text = new TextGenerator(new Generator(model), tokenizer);
            var settings = options.Apply(text.DefaultSettings(folder));
            var promptIds = EncodePrompt(options, tokenizer, adapter);
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
        catch (Exception e) when (e is ModelFormatException or UnsupportedModelException or TokenizerLoadException or HubException
                                      or AdapterFormatException or PromptTemplateException or FineTune.Engine.Tokenization.Jinja.ChatTemplateException
                                      or IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException
                                      or InvalidOperationException or InvalidDataException or HttpRequestException
                                      or System.Runtime.InteropServices.ExternalException)
        {
            await error.WriteLineAsync($"generate: {OneLine(e.Message)}").ConfigureAwait(false);
            return 1;
        }
        finally
        {
            if (extracted is not null) Directory.Delete(extracted, recursive: true);
        }
    }

    /// <summary>A model folder as it is; anything else is a Hub id, downloaded into (or found in) the Hub cache.</summary>
    internal static async Task<string> ResolveModelFolderAsync(string model, CancellationToken cancellationToken)
    {
        if (Directory.Exists(model)) return Path.GetFullPath(model);
        if (model.StartsWith('.') || model.StartsWith('/') || model.Contains('\\') || model.Count(c => c == '/') != 1)
            throw new DirectoryNotFoundException($"--model {model}: no such folder (and not a Hub id such as Qwen/Qwen2.5-0.5B-Instruct).");
        using var http = new HttpClient();
        return await new HubDownloader(http).ResolveModelFolderAsync(model, cancellationToken: cancellationToken).ConfigureAwait(false);
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

    private static IReadOnlyList<int> EncodePrompt(Options options, ITextTokenizer tokenizer, string? adapter)
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

    private static string OneLine(string message) => message.ReplaceLineEndings(" ").Trim();

    private sealed class UsageException(string message) : Exception(message);

    private sealed record Options(string Model, string Prompt)
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

        public static Options Parse(IReadOnlyList<string> args)
        {
            var values = new Dictionary<string, string>(StringComparer.Ordinal);
            var flags = new HashSet<string>(StringComparer.Ordinal);
            string[] valued = ["--model", "--prompt", "--template", "--temperature", "--top-p", "--top-k", "--max-new-tokens", "--seed", "--adapter"];
            string[] flagNames = ["--raw", "--greedy"];
            for (int i = 0; i < args.Count; i++)
            {
                string arg = args[i];
                if (flagNames.Contains(arg)) flags.Add(arg);
                else if (valued.Contains(arg))
                {
                    if (i + 1 >= args.Count) throw new UsageException($"{arg} needs a value.");
                    if (!values.TryAdd(arg, args[++i])) throw new UsageException($"{arg} is given twice.");
                }
                else throw new UsageException($"unknown argument '{arg}'.");
            }
            if (!values.TryGetValue("--model", out string? model) || string.IsNullOrWhiteSpace(model)) throw new UsageException("--model is required.");
            if (!values.TryGetValue("--prompt", out string? prompt)) throw new UsageException("--prompt is required.");
            if (flags.Contains("--raw") && values.ContainsKey("--template")) throw new UsageException("--raw and --template exclude each other.");
            bool sampling = values.ContainsKey("--temperature") || values.ContainsKey("--top-p") || values.ContainsKey("--top-k");
            if (flags.Contains("--greedy") && sampling) throw new UsageException("--greedy excludes --temperature, --top-p and --top-k.");

            return new Options(model, prompt)
            {
                Raw = flags.Contains("--raw"),
                Greedy = flags.Contains("--greedy"),
                Template = values.GetValueOrDefault("--template"),
                Temperature = Number(values, "--temperature", v => v > 0, "a number greater than 0"),
                TopP = Number(values, "--top-p", v => v > 0 && v <= 1, "a number in (0, 1]"),
                TopK = Integer(values, "--top-k", v => v >= 0, "0 (off) or a positive whole number"),
                MaxNewTokens = Integer(values, "--max-new-tokens", v => v >= 1, "a whole number of at least 1"),
                Seed = Integer(values, "--seed", _ => true, "a whole number"),
                Adapter = values.GetValueOrDefault("--adapter"),
            };
        }

        private static double? Number(Dictionary<string, string> values, string key, Func<double, bool> valid, string expected)
        {
            if (!values.TryGetValue(key, out string? text)) return null;
            if (double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && valid(v)) return v;
            throw new UsageException($"{key} '{text}' should be {expected}.");
        }

        private static int? Integer(Dictionary<string, string> values, string key, Func<int, bool> valid, string expected)
        {
            if (!values.TryGetValue(key, out string? text)) return null;
            if (int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) && valid(v)) return v;
            throw new UsageException($"{key} '{text}' should be {expected}.");
        }
    }
}
