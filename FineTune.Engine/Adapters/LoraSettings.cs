namespace FineTune.Engine.Adapters;

/// <summary>
/// LoRA hyper-parameters, with PEFT LoraConfig's meaning and the tutorial's defaults
/// (r=16, alpha=32, dropout 0.05 on q/k/v/o_proj).
/// </summary>
/// <param name="Rank">r: the inner dimension of lora_A (r, in) and lora_B (out, r).</param>
/// <param name="Alpha">lora_alpha: the update is scaled by alpha/r (or alpha/√r with rsLoRA).</param>
/// <param name="Dropout">lora_dropout: dropout on the LoRA path's input while training.</param>
/// <param name="TargetModules">Module names (suffix match on the model's linear names, like PEFT's target_modules list).</param>
/// <param name="UseRsLora">use_rslora: scaling alpha/√r instead of alpha/r.</param>
public sealed record LoraSettings(
    int Rank = 16,
    double Alpha = 32,
    double Dropout = 0.05,
    IReadOnlyList<string>? TargetModules = null,
    bool UseRsLora = false)
{
    public static readonly IReadOnlyList<string> DefaultTargetModules = ["q_proj", "k_proj", "v_proj", "o_proj"];

    public IReadOnlyList<string> Targets => TargetModules is { Count: > 0 } t ? t : DefaultTargetModules;

    /// <summary>PEFT's scaling: lora_alpha / r, or lora_alpha / sqrt(r) with use_rslora.</summary>
    public double Scaling => UseRsLora ? Alpha / Math.Sqrt(Rank) : Alpha / Rank;

    /// <summary>Throws when a value cannot work, naming it and what to use instead.</summary>
    public void Validate()
    {
        if (Rank < 1) throw new ArgumentOutOfRangeException(nameof(Rank), Rank, "The LoRA rank r must be at least 1 (8, 16 or 32 are usual).");
        if (!(Alpha > 0) || double.IsInfinity(Alpha)) throw new ArgumentOutOfRangeException(nameof(Alpha), Alpha, "lora_alpha must be a positive number (often 2 × r).");
        if (!(Dropout >= 0 && Dropout < 1)) throw new ArgumentOutOfRangeException(nameof(Dropout), Dropout, "lora_dropout must be in [0, 1), e.g. 0.05.");
    }
}
