using Microsoft.Extensions.Logging;

namespace FineTune.Bench;

/// <summary>Keeps the trainer's "CUDA graphs: N micro-batches replayed ..." line, its padding decision ("The GPU was busy ..."), its long micro-batches ("Long micro-batches: ...") and the pipeline's checkpointing choice ("gradient checkpointing ...").</summary>
internal sealed class GraphLog : ILogger, ILoggerFactory
{
    public ILogger CreateLogger(string categoryName) => this;
    public void AddProvider(ILoggerProvider provider) { }
    public void Dispose() { }

    public string? Line { get; private set; }
    public int Replays { get; private set; }
    public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;
    public bool IsEnabled(LogLevel logLevel) => true;
    public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
    {
        string text = formatter(state, exception);
        if (!text.StartsWith("CUDA graphs", StringComparison.Ordinal) && !text.Contains("without CUDA graphs", StringComparison.Ordinal)
            && !text.StartsWith("The GPU was busy", StringComparison.Ordinal) && !text.StartsWith("Long micro-batches", StringComparison.Ordinal)
            && !text.StartsWith("gradient checkpointing", StringComparison.Ordinal)) return;
        Line = Line is null ? text : Line + " | " + text;
        var words = text.Split(' ');
        if (text.StartsWith("CUDA graphs: ", StringComparison.Ordinal) && int.TryParse(words[2], out int replays)) Replays = replays;
    }
}
