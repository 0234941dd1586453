using FineTune.Web.Features.Settings;

namespace FineTune.Tests.Web.Features.Settings;

public class SettingsValidationTests
{
    [Fact]
    public void The_tutorial_defaults_are_valid()
    {
        Assert.Empty(SettingsValidation.Validate(new TrainingSettings()));
    }

    [Theory]
    [InlineData(nameof(TrainingSettings.LoraR), 0, SettingField.LoraR)]
    [InlineData(nameof(TrainingSettings.LearningRate), 100, SettingField.LearningRate)]
    [InlineData(nameof(TrainingSettings.Epochs), 0, SettingField.Epochs)]
    [InlineData(nameof(TrainingSettings.MaxSeqLength), 1, SettingField.MaxLength)]
    [InlineData(nameof(TrainingSettings.LoraDropout), 0.9, SettingField.LoraDropout)]
    public void Out_of_range_values_are_errors_at_their_field_and_are_not_changed(string property, double value, SettingField field)
    {
        var settings = new TrainingSettings();
        var info = typeof(TrainingSettings).GetProperty(property)!;
        info.SetValue(settings, Convert.ChangeType(value, info.PropertyType, System.Globalization.CultureInfo.InvariantCulture));

        var error = Assert.Single(SettingsValidation.Validate(settings));

        Assert.Equal(field, error.Field);
        Assert.Equal(SettingsValidation.Ranges[field].Min, error.Min);
        Assert.Equal(SettingsValidation.Ranges[field].Max, error.Max);
        Assert.Equal(value, Convert.ToDouble(info.GetValue(settings), System.Globalization.CultureInfo.InvariantCulture));
    }

    [Fact]
    public void Targets_the_model_lacks_are_errors_with_its_own_names_as_the_fix()
    {
        string[] qwen2 = ["model.layers.0.self_attn.q_proj", "model.layers.0.self_attn.k_proj", "model.layers.0.self_attn.v_proj",
            "model.layers.0.self_attn.o_proj", "model.layers.0.mlp.gate_proj", "lm_head"];
        var settings = new TrainingSettings { TargetModules = ["q_proj", "foo_proj"] };

        var error = Assert.Single(SettingsValidation.Validate(settings, qwen2));

        Assert.Equal(SettingField.TargetModules, error.Field);
        Assert.Equal(["foo_proj"], error.MissingTargets);
        Assert.Equal(["q_proj", "k_proj", "v_proj", "o_proj"], error.Suggested);
        Assert.Empty(SettingsValidation.Validate(new TrainingSettings(), qwen2));
    }

    [Fact]
    public void The_tutorials_targets_on_qwen_v1_point_to_c_attn_and_c_proj()
    {
        // The seed's Qwen-7B (v1): transformer.h.N.attn.{c_attn, c_proj}, mlp.{w1, w2, c_proj}.
        string[] qwenV1 = ["transformer.h.0.attn.c_attn", "transformer.h.0.attn.c_proj", "transformer.h.0.mlp.w1", "transformer.h.0.mlp.w2",
            "transformer.h.0.mlp.c_proj", "lm_head"];

        var error = Assert.Single(SettingsValidation.Validate(new TrainingSettings(), qwenV1));

        Assert.Equal(["q_proj", "k_proj", "v_proj", "o_proj"], error.MissingTargets);
        Assert.True(SettingsValidation.IsQwenV1Attention(qwenV1, error.MissingTargets!));
        Assert.Equal(["c_attn", "c_proj"], error.Suggested);
        Assert.Empty(SettingsValidation.Validate(new TrainingSettings { TargetModules = [.. error.Suggested!] }, qwenV1));
    }

    [Fact]
    public void No_target_at_all_is_an_error()
    {
        Assert.Equal(SettingField.TargetModules, Assert.Single(SettingsValidation.Validate(new TrainingSettings { TargetModules = [] })).Field);
    }
}
