using System.Globalization;

namespace FineTune.Web.Features.Settings;

/// <summary>A settings field the validation speaks about (its label is "Field_{name}", its reason "Why_{name}").</summary>
public enum SettingField
{
    LoraR, LoraAlpha, LoraDropout, TargetModules,
    Epochs, BatchSize, Accumulation, LearningRate, Warmup, MaxLength, EvalFraction, Seed,
    LoggingSteps, SaveSteps, SaveTotalLimit,
}

/// <summary>What is wrong with one field.</summary>
/// <param name="Min">The allowed range, for range errors.</param>
/// <param name="MissingTargets">For <see cref="SettingField.TargetModules"/>: targets the model has no linear layer for.</param>
/// <param name="Suggested">For <see cref="SettingField.TargetModules"/>: the model's own names to use instead (the one-click fix).</param>
public sealed record SettingError(SettingField Field, double? Min = null, double? Max = null,
    IReadOnlyList<string>? MissingTargets = null, IReadOnlyList<string>? Suggested = null)
{
    public string MinText => Format(Min);
    public string MaxText => Format(Max);

    private static string Format(double? value) => value?.ToString("0.#######", CultureInfo.InvariantCulture) ?? string.Empty;
}

/// <summary>
/// The allowed range of every setting and why, checked as the user types: a value outside is shown as an error at
/// its field and training cannot start; nothing is clamped behind the user's back.
/// </summary>
public static class SettingsValidation
{
    public static readonly IReadOnlyDictionary<SettingField, (double Min, double Max)> Ranges = new Dictionary<SettingField, (double, double)>
    {
        [SettingField.LoraR] = (1, 256),
        [SettingField.LoraAlpha] = (1, 512),
        [SettingField.LoraDropout] = (0, 0.5),
        [SettingField.Epochs] = (1, 100),
        [SettingField.BatchSize] = (1, 64),
        [SettingField.Accumulation] = (1, 128),
        [SettingField.LearningRate] = (1e-6, 1e-2),
        [SettingField.Warmup] = (0, 0.5),
        [SettingField.MaxLength] = (32, 8192),
        [SettingField.EvalFraction] = (0, 0.5),
        [SettingField.Seed] = (0, int.MaxValue),
        [SettingField.LoggingSteps] = (1, 100_000),
        [SettingField.SaveSteps] = (1, 100_000),
        [SettingField.SaveTotalLimit] = (1, 20),
    };

    /// <summary>The Llama/Qwen2 attention names the tutorial uses, and what they are called in Qwen (v1).</summary>
    private static readonly string[] TutorialAttention = ["q_proj", "k_proj", "v_proj", "o_proj"];

    /// <param name="linearNames">The model's linear-layer names (leaf names such as "q_proj", or full names); null when not known yet.</param>
    public static IReadOnlyList<SettingError> Validate(TrainingSettings s, IReadOnlyList<string>? linearNames = null)
    {
        var errors = new List<SettingError>();
        void Check(SettingField field, double value)
        {
            var (min, max) = Ranges[field];
            if (double.IsNaN(value) || value < min || value > max) errors.Add(new SettingError(field, min, max));
        }
        Check(SettingField.LoraR, s.LoraR);
        Check(SettingField.LoraAlpha, s.LoraAlpha);
        Check(SettingField.LoraDropout, s.LoraDropout);
        Check(SettingField.Epochs, s.Epochs);
        Check(SettingField.BatchSize, s.BatchSize);
        Check(SettingField.Accumulation, s.GradientAccumulationSteps);
        Check(SettingField.LearningRate, s.LearningRate);
        Check(SettingField.Warmup, s.WarmupRatio);
        Check(SettingField.MaxLength, s.MaxSeqLength);
        Check(SettingField.EvalFraction, s.EvalFraction);
        Check(SettingField.Seed, s.Seed);
        Check(SettingField.LoggingSteps, s.LoggingSteps);
        Check(SettingField.SaveSteps, s.SaveSteps);
        Check(SettingField.SaveTotalLimit, s.SaveTotalLimit);

        if (s.TargetModules.Count == 0)
            errors.Add(new SettingError(SettingField.TargetModules, MissingTargets: [], Suggested: linearNames is null ? null : Suggest(linearNames, [])));
        else if (linearNames is { Count: > 0 })
        {
            var missing = s.TargetModules.Where(t => !linearNames.Any(n => Names.Matches(n, t))).ToList();
            if (missing.Count > 0)
                errors.Add(new SettingError(SettingField.TargetModules, MissingTargets: missing, Suggested: Suggest(linearNames, missing)));
        }
        return errors;
    }

    /// <summary>True when the tutorial's q/k/v/o_proj were asked of a model that fuses attention as Qwen (v1) does (c_attn, c_proj).</summary>
    public static bool IsQwenV1Attention(IReadOnlyList<string> linearNames, IReadOnlyList<string> missing) =>
        linearNames.Any(n => Names.Leaf(n) == "c_attn") && missing.Any(m => TutorialAttention.Contains(m));

    /// <summary>The model's attention projections (what the tutorial adapts), else all its linear layers but the LM head.</summary>
    private static IReadOnlyList<string> Suggest(IReadOnlyList<string> linearNames, IReadOnlyList<string> missing)
    {
        var leaves = linearNames.Select(Names.Leaf).Where(n => n != "lm_head").Distinct().ToList();
        string[] attention = leaves.Contains("c_attn") ? ["c_attn", "c_proj"] : TutorialAttention;
        var present = attention.Where(leaves.Contains).ToList();
        return present.Count > 0 ? present : leaves;
    }

    /// <summary>PEFT's target_modules rule (the engine's LoraInjector.Matches), on names that may be leaves already.</summary>
    private static class Names
    {
        public static bool Matches(string layerName, string target) => FineTune.Engine.Adapters.LoraInjector.Matches(layerName, target);
        public static string Leaf(string name) => name[(name.LastIndexOf('.') + 1)..];
    }
}
