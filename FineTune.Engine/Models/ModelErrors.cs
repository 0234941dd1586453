namespace FineTune.Engine.Models;

/// <summary>The folder holds a model whose architecture (config.json model_type) this engine does not implement.</summary>
public sealed class UnsupportedModelException(string message) : Exception(message);

/// <summary>A model file (config.json, safetensors, index) is missing, malformed or disagrees with the others.</summary>
public sealed class ModelFormatException : Exception
{
    public ModelFormatException(string message) : base(message) { }

    public ModelFormatException(string message, Exception inner) : base(message, inner) { }
}
