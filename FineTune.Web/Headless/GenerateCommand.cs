using System.Globalization;
using FineTune.Engine.Backend;
using FineTune.Engine.Generation;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;

namespace FineTune.Web.Headless;

/// <summary>
/// <c>generate --model &lt;folder|hub id&gt; --prompt TEXT [--raw] [--template chat|tutorial|TEXT]
/// [--greedy | --temperature T --top-p P [--top-k K]] [--max-new-tokens N] [--seed N] [--adapter &lt;zip|folder&gt;]</c>:
/// prints only the generated text on stdout, as it is generated. Bad arguments or an unreadable model: one line
/// on stderr and a non-zero exit code (2 for usage, 1 for everything else, 130 when interrupted).
/// </summary>
public static class GenerateCommand
{
    public const string Name = "generate";

    public const string Usage =
        "usage: generate --model <folder|hub id> --prompt TEXT [--raw] [--template chat|tutorial|TEXT] " +
        "[--greedy | --temperature T --top-p P [--top-k K]] [--max-new-tokens N] [--seed N] [--adapter <zip|folder>]";

    /// <summary>The tutorial's prompt layout (the same as training's default), {prompt} standing for the question.</summary>
    public const string TutorialTemplate = "### 指令:\n{prompt}\n\n### 回應:\n";

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

        try
        {
            string folder = ResolveModelFolder(options.Model);
            if (options.Adapter is not null)
                throw new NotSupportedException($"--adapter {options.Adapter}: loading LoRA adapters is not available in this build yet; generate with the base model, or merge the adapter first.");
            ComputeBackend.Initialize();
            var tokenizer = TokenizerLoader.Load(folder);
            using var model = ModelLoader.Load(folder);
            var text = new TextGenerator(new Generator(model), tokenizer);
            var settings = options.Apply(text.DefaultSettings(folder));
            var (prompt, addSpecialTokens) = FormatPrompt(options, tokenizer);
            await foreach (string piece in text.StreamAsync(prompt, settings, addSpecialTokens, cancellationToken).ConfigureAwait(false))
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
        catch (Exception e) when (e is ModelFormatException or UnsupportedModelException or TokenizerLoadException
                                      or IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException
                                      or InvalidOperationException or System.Runtime.InteropServices.ExternalException)
        {
            await error.WriteLineAsync($"generate: {OneLine(e.Message)}").ConfigureAwait(false);
            return 1;
        }
    }

    private static string ResolveModelFolder(string model)
    {
        if (Directory.Exists(model)) return Path.GetFullPath(model);
        bool looksLikeHubId = !model.Contains('\\') && model.Count(c => c == '/') == 1 && !model.StartsWith('.') && !model.StartsWith('/');
        if (looksLikeHubId)
            throw new NotSupportedException($"--model {model}: downloading from the Hugging Face Hub is not available in this build; download the model folder and pass its path.");
        throw new DirectoryNotFoundException($"--model {model}: no such folder.");
    }

    private static (string Prompt, bool AddSpecialTokens) FormatPrompt(Options options, ITextTokenizer tokenizer)
    {
        if (options.Raw) return (options.Prompt, true);
        string template = options.Template ?? (tokenizer.ChatTemplate is not null ? "chat" : "tutorial");
        return template switch
        {
            "chat" => throw new NotSupportedException(
                tokenizer.ChatTemplate is null
                    ? "this model has no chat template; use --template tutorial, --raw or a custom --template with {prompt}."
                    : "chat templates cannot be rendered in this build yet; use --template tutorial, --raw or a custom --template with {prompt}."),
            "tutorial" => (TutorialTemplate.Replace("{prompt}", options.Prompt, StringComparison.Ordinal), true),
            _ when template.Contains("{prompt}", StringComparison.Ordinal) => (template.Replace("{prompt}", options.Prompt, StringComparison.Ordinal), true),
            _ => throw new ArgumentException($"--template '{template}' is neither chat, tutorial nor a custom template containing {{prompt}}."),
        };
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
