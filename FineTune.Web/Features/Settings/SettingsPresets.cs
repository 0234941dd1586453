namespace FineTune.Web.Features.Settings;

public enum SettingsPreset { Quick, Balanced, Thorough }

/// <summary>Three starting points. Balanced is the tutorial's settings.</summary>
public static class SettingsPresets
{
    public static void Apply(TrainingSettings s, SettingsPreset preset)
    {
        var tutorial = new TrainingSettings();
        (s.Epochs, s.LoraR, s.LoraAlpha, s.LearningRate, s.MaxSeqLength) = preset switch
        {
            SettingsPreset.Quick => (1, 8, 16, 3e-4, 256),
            SettingsPreset.Thorough => (5, 32, 64, 1e-4, 1024),
            _ => (tutorial.Epochs, tutorial.LoraR, tutorial.LoraAlpha, tutorial.LearningRate, tutorial.MaxSeqLength),
        };
        s.LoraDropout = tutorial.LoraDropout;
        s.BatchSize = tutorial.BatchSize;
        s.GradientAccumulationSteps = tutorial.GradientAccumulationSteps;
        s.WarmupRatio = tutorial.WarmupRatio;
    }

    /// <summary>Which preset the settings equal, if any.</summary>
    public static SettingsPreset? Match(TrainingSettings s)
    {
        foreach (var preset in Enum.GetValues<SettingsPreset>())
        {
            var probe = s.Clone();
            Apply(probe, preset);
            if (probe.ToJson() == s.ToJson()) return preset;
        }
        return null;
    }
}
