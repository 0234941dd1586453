namespace FineTune.Tests.Support;

/// <summary>Trait names for selecting tests: `dotnet test --filter Category!=Slow`.</summary>
public static class Category
{
    public const string Name = "Category";
    /// <summary>Takes more than a few seconds (training a tiny model, end-to-end browser runs).</summary>
    public const string Slow = "Slow";
    /// <summary>Needs a CUDA device; skipped where there is none.</summary>
    public const string Gpu = "GPU";
    /// <summary>Numeric parity against HF transformers / PEFT golden files.</summary>
    public const string Parity = "Parity";
    /// <summary>Drives a real browser.</summary>
    public const string EndToEnd = "EndToEnd";
}
