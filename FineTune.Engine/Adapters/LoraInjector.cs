namespace FineTune.Engine.Adapters;

/// <summary>A target module name matched none of the model's linear layers.</summary>
public sealed class LoraTargetNotFoundException(string message, IReadOnlyList<string> missing, IReadOnlyList<string> available)
    : ArgumentException(message)
{
    public IReadOnlyList<string> MissingTargets { get; } = missing;
    public IReadOnlyList<string> AvailableNames { get; } = available;
}

/// <summary>Attaches LoRA to a model's linear layers chosen by name, as PEFT's target_modules list does.</summary>
public static class LoraInjector
{
    /// <summary>
    /// PEFT's rule for a list of targets: the layer's full name equals the target or ends with "." + target.
    /// </summary>
    public static bool Matches(string layerName, string target) =>
        layerName == target || layerName.EndsWith("." + target, StringComparison.Ordinal);

    /// <summary>The layers that the settings' targets select; throws when any target selects nothing.</summary>
    public static IReadOnlyList<(string Name, LoraLinear Layer)> Select(
        IEnumerable<(string Name, LoraLinear Layer)> linears, IReadOnlyList<string> targets)
    {
        var all = linears.ToList();
        var selected = all.Where(l => targets.Any(t => Matches(l.Name, t))).ToList();
        var missing = targets.Where(t => !all.Any(l => Matches(l.Name, t))).ToList();
        if (missing.Count > 0) throw NotFound(missing, all.Select(l => l.Name).ToList());
        return selected;
    }

    /// <summary>
    /// Attaches a fresh adapter (A Kaiming-uniform, B zeros) to every selected layer; returns their names.
    /// With <paramref name="seed"/> the A matrices come from their own generator (same values every time,
    /// whatever else uses torch's global RNG).
    /// </summary>
    public static IReadOnlyList<string> Attach(IEnumerable<(string Name, LoraLinear Layer)> linears, LoraSettings settings, long? seed = null)
    {
        settings.Validate();
        var selected = Select(linears, settings.Targets);
        using var generator = seed is long s ? new TorchSharp.torch.Generator((ulong)s) : null;
        foreach (var (_, layer) in selected)
            layer.AttachLora(settings.Rank, settings.Alpha, settings.Dropout, settings.UseRsLora, generator: generator);
        return [.. selected.Select(s => s.Name)];
    }

    private static LoraTargetNotFoundException NotFound(List<string> missing, List<string> names)
    {
        var leafNames = names.Select(n => n[(n.LastIndexOf('.') + 1)..]).Distinct().ToList();
        string message =
            $"LoRA target module(s) {string.Join(", ", missing.Select(m => $"'{m}'"))} match none of this model's linear layers. " +
            $"Its linear layer names are: {string.Join(", ", leafNames)}.";
        bool qwenV1 = leafNames.Contains("c_attn");
        bool askedForLlamaNames = missing.Any(m => m is "q_proj" or "k_proj" or "v_proj" or "o_proj");
        if (qwenV1 && askedForLlamaNames)
            message += " This looks like Qwen (v1), whose attention uses c_attn (q, k and v together) and c_proj: use target modules c_attn, c_proj.";
        else
            message += " Choose target modules from these names.";
        return new LoraTargetNotFoundException(message, missing, leafNames);
    }
}
