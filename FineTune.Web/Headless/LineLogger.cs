using FineTune.Engine.Training;
using Microsoft.Extensions.Logging;

namespace FineTune.Web.Headless;

/// <summary>
/// Log lines for a headless command's console: the pipeline's own messages as they are, every warning and error
/// of the engine as "warning: …" / "error: …", nothing else (the commands print their own progress lines).
/// </summary>
public sealed class LineLoggerProvider(TextWriter output) : ILoggerProvider
{
    public static ILoggerFactory Factory(TextWriter output) =>
        LoggerFactory.Create(builder => builder.SetMinimumLevel(LogLevel.Information).AddProvider(new LineLoggerProvider(output)));

    public ILogger CreateLogger(string categoryName) => new LineLogger(output, categoryName);

    public void Dispose()
    {
    }

    private sealed class LineLogger(TextWriter output, string category) : ILogger
    {
        public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

        public bool IsEnabled(LogLevel logLevel) =>
            logLevel >= LogLevel.Warning || (logLevel == LogLevel.Information && category == FineTunePipeline.LogCategory);

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
