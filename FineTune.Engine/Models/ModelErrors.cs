namespace FineTune.Engine.Models;

/// <summary>The folder holds a model whose architecture (config.json model_type) this engine does not implement.</summary>
public sealed class UnsupportedModelException(string message) : Exception(message);

/// <summary>
/// The model does not fit in the memory its device has (<see cref="ModelMemoryCheck"/>); thrown before anything is
/// allocated. The message starts "Not enough memory to load" (the web shows a headline in the page's language for it).
/// </summary>
public sealed class ModelMemoryException(long neededBytes, long availableBytes, string message) : Exception(message)
{
    public long NeededBytes { get; } = neededBytes;
    public long AvailableBytes { get; } = availableBytes;
}

/// <summary>A model file (config.json, safetensors, index) is missing, malformed or disagrees with the others.</summary>
public sealed class ModelFormatException : Exception
{
    public ModelFormatException(string message) : base(message) { }

    public ModelFormatException(string message, Exception inner) : base(message, inner) { }
}
