using System.CommandLine;
using System.CommandLine.Help;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Export;
using FineTune.Engine.Hub;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;
using FineTune.Engine.Tokenization.Jinja;
using Microsoft.Extensions.Logging;

namespace FineTune.Web.Headless;

/// <summary>Where a headless command writes, and the Hub it resolves model ids with; tests pass their own.</summary>
public sealed record HeadlessConsole(TextWriter Output, TextWriter Error)
{
    /// <summary>The Hub's address, cache folder and offline flag, read from HF_ENDPOINT, HF_HUB_CACHE, HF_HUB_OFFLINE… as the web app reads them.</summary>
    public HubOptions Hub { get; init; } = new();

    public static HeadlessConsole Process => new(Console.Out, Console.Error);
}

/// <summary>
/// The command line of the headless commands (System.CommandLine): <c>train</c>, <c>generate</c>, <c>export-gguf</c> and
/// <c>healthcheck</c>, each with <c>--help</c>. Exit codes: 0 done, 2 a usage error (unknown option, missing or bad value:
/// one line on stderr naming it), 1 a failure (one line saying why), 3 out of memory (train), 130 interrupted.
/// </summary>
public static class HeadlessCli
{
    public const int UsageError = 2;

    /// <summary>The command names; any other first argument starts the web app.</summary>
    public static readonly IReadOnlyList<string> Commands = [TrainCommand.Name, GenerateCommand.Name, ExportGgufCommand.Name, HealthCheckCommand.Name];

    /// <summary>
    /// A command's console logger, on stderr: stdout is the command's own output (generate's answer, train's progress
    /// lines, export-gguf's files), which scripts read. Engine warnings for every command; train and export-gguf also
    /// show the compute backend's choice and the pipeline's messages, generate (quiet when all is well) does not.
    /// </summary>
    internal static ILoggerFactory Loggers(HeadlessConsole console, string command) =>
        LineLoggerProvider.Factory(console.Error, information: command != GenerateCommand.Name);

    /// <summary>True when <paramref name="args"/> asks for a command (or the commands' help) rather than the web app.</summary>
    public static bool IsCommandLine(IReadOnlyList<string> args) =>
        args.Count > 0 && (Commands.Contains(args[0]) || args[0] is "--help" or "-h" or "-?" or "--version");

    public static RootCommand Create(HeadlessConsole console) =>
        new("FineTune: LoRA/QLoRA fine-tuning of Hugging Face causal LMs. Without a command the web app starts " +
            "(dotnet FineTune.Web.dll [--urls http://0.0.0.0:8080]); these commands run without it.")
        {
            TrainCommand.Create(console),
            GenerateCommand.Create(console),
            ExportGgufCommand.Create(console),
            HealthCheckCommand.Create(console),
        };

    /// <summary>Parses and runs <paramref name="args"/> (the first one names the command); Ctrl+C is <paramref name="cancellationToken"/>.</summary>
    public static async Task<int> RunAsync(IReadOnlyList<string> args, HeadlessConsole console, CancellationToken cancellationToken = default)
    {
        var parsed = Create(console).Parse(args);
        // A usage error is answered at once, before libtorch is loaded (seconds, or a failure of its own where it cannot
        // load): a command line that cannot run anywhere is told so first. The commands choose the backend as they start.
        if (parsed.Errors.Count > 0 && parsed.Action is not HelpAction)
        {
            // One line that names the problem (System.CommandLine would print every error and the whole help).
            string command = parsed.CommandResult.Command is RootCommand ? "finetune" : parsed.CommandResult.Command.Name;
            await console.Error.WriteLineAsync($"{command}: {OneLine(parsed.Errors[0].Message)} See '{command} --help'.").ConfigureAwait(false);
            return UsageError;
        }
        // Our own Ctrl+C token (CancelOnCtrlC): training stops after the current step however long it takes, so
        // System.CommandLine's own handler, which ends the process after a timeout, stays off.
        var invocation = new InvocationConfiguration { Output = console.Output, Error = console.Error, ProcessTerminationTimeout = null, EnableDefaultExceptionHandler = false };
        return await parsed.InvokeAsync(invocation, cancellationToken).ConfigureAwait(false);
    }

    /// <summary>A command's usage error found after parsing (a value that only the engine can check): one line, exit 2.</summary>
    internal static int Usage(HeadlessConsole console, string command, string message)
    {
        console.Error.WriteLine($"{command}: {OneLine(message)} See '{command} --help'.");
        return UsageError;
    }

    /// <summary>
    /// The compute backend, chosen once per process with the console's logger (its "Compute backend: …" line); null, after
    /// one line on stderr saying why, where libtorch cannot load here (exit 1). Called after the usage errors are out.
    /// </summary>
    internal static BackendInfo? Backend(HeadlessConsole console, string command, ILoggerFactory loggers)
    {
        var backend = ComputeBackend.Initialize(loggers.CreateLogger(LineLoggerProvider.BackendCategory));
        if (backend.CanCompute) return backend;
        console.Error.WriteLine($"{command}: {OneLine(backend.UnavailableReason ?? backend.Description)}");
        return null;
    }

    /// <summary>
    /// What `generate` and `export-gguf` report as one line and exit 1: a model, tokenizer, template or adapter they cannot
    /// use, a Hub that cannot be reached, a file they cannot read or write, a libtorch error. Anything else keeps its trace.
    /// </summary>
    internal static bool IsOneLineFailure(Exception e) =>
        e is ModelFormatException or UnsupportedModelException or TokenizerLoadException or HubException or AdapterFormatException
            or PromptTemplateException or ChatTemplateException or GgufExportException or ArithmeticException
            or IOException or UnauthorizedAccessException or ArgumentException or NotSupportedException or InvalidOperationException
            or InvalidDataException or HttpRequestException or System.Runtime.InteropServices.ExternalException;

    internal static string OneLine(string message) => message.ReplaceLineEndings(" ").Trim();
}

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
