using FineTune.Engine.Training;
using Microsoft.Extensions.Logging;

namespace FineTune.Web.Headless;

/// <summary>
/// Log lines for a headless command's console: every warning of the engine as "warning: …" and error as "error: …",
/// and, where the command shows them (<c>information</c>), the pipeline's messages and the compute backend's choice
/// as they are; nothing else (the commands print their own progress lines).
/// </summary>
public sealed class LineLoggerProvider(TextWriter output, bool information) : ILoggerProvider
{
    /// <summary>The category the commands choose the compute backend under ("Compute backend: …").</summary>
    public const string BackendCategory = "FineTune.Backend";

    public static ILoggerFactory Factory(TextWriter output, bool information = true) =>
        LoggerFactory.Create(builder => builder.SetMinimumLevel(LogLevel.Information).AddProvider(new LineLoggerProvider(output, information)));

    public ILogger CreateLogger(string categoryName) => new LineLogger(output, categoryName, information);

    public void Dispose()
    {
    }

    private sealed class LineLogger(TextWriter output, string category, bool information) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) => logLevel switch
        {
            LogLevel.Information => information && category is FineTunePipeline.LogCategory or BackendCategory,
            // A backend that cannot load is the command's own one-line failure (HeadlessCli.Backend), not a second line.
            >= LogLevel.Error when category == BackendCategory => false,
            _ => logLevel >= LogLevel.Warning,
        };

        public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
        {
            if (!IsEnabled(logLevel)) return;
            string prefix = logLevel switch
            {
                LogLevel.Information => "",
                LogLevel.Warning => "warning: ",
                _ => "error: ",
            };
            lock (output) output.WriteLine(prefix + formatter(state, exception));
        }
    }
}
