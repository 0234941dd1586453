using Bunit;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using FineTune.Web.Components.Pages.Wizard.Settings;
using FineTune.Web.Features.Data;
using FineTune.Web.Features.Settings;

namespace FineTune.Tests.Web.Components;

/// <summary>LoRA targets are chosen from the model's real linear layers (the engine's ModelFacts), not typed.</summary>
public sealed class SettingsStepTargetsTests : ComponentTestContext
{
    private void LoadRows(string model)
    {
        var file = Importer.Parse(File.ReadAllBytes(TestFiles.Sample("tutorial-qa.xlsx")), "tutorial-qa.xlsx");
        State.File = file;
        State.Dataset = new DatasetDraft(Importer.Build(file, new ImportSettings()));
        State.Settings.Source = ModelSource.Local;
        State.Settings.Model = TestFiles.Fixture($"models/{model}");
    }

    private static string[] Chips(IRenderedComponent<SettingsStep> cut) =>
        [.. cut.FindAll("[data-testid=field-targets] [data-choice=true]").Select(c => c.GetAttribute("data-target")!)];

    [Fact]
    public void A_qwen2_folder_offers_its_own_linear_layers_and_a_chip_toggles_a_target()
    {
        LoadRows("qwen2");
        var cut = Render<SettingsStep>();

        Assert.Equal(["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], Chips(cut));
        Assert.Empty(cut.FindAll("input[data-testid=field-targets]"));
        Assert.Empty(cut.FindAll("[data-testid=field-targets] [data-missing=true]"));

        cut.Find("[data-testid=field-targets] [data-target=down_proj]").Click();
        Assert.Equal(["q_proj", "k_proj", "v_proj", "o_proj", "down_proj"], State.Settings.TargetModules);
        cut.Find("[data-testid=field-targets] [data-target=k_proj]").Click();
        Assert.Equal(["q_proj", "v_proj", "o_proj", "down_proj"], State.Settings.TargetModules);
        Assert.Empty(cut.FindAll("[data-testid=field-error][data-field=TargetModules]"));
    }

    [Fact]
    public void On_a_qwen_v1_folder_the_tutorials_names_show_in_red_with_the_note_and_the_one_click_fix()
    {
        LoadRows("qwen-v1");
        var cut = Render<SettingsStep>(); // the tutorial's targets: q/k/v/o_proj

        Assert.Equal(["c_attn", "c_proj", "w1", "w2"], Chips(cut).Order(StringComparer.Ordinal).ToArray());
        string[] missing = [.. cut.FindAll("[data-testid=field-targets] [data-missing=true]").Select(c => c.GetAttribute("data-target")!)];
        Assert.Equal(["q_proj", "k_proj", "v_proj", "o_proj"], missing);
        string error = cut.Find("[data-testid=field-error][data-field=TargetModules]").TextContent;
        Assert.Contains("q_proj", error);
        Assert.Contains("c_attn", error); // the Qwen (v1) note: its attention is c_attn + c_proj
        Assert.True(cut.Find("[data-testid=start-training]").HasAttribute("disabled"));

        cut.Find("[data-testid=fix-targets]").Click();
        Assert.Equal(["c_attn", "c_proj"], State.Settings.TargetModules);
        Assert.Empty(cut.FindAll("[data-testid=field-targets] [data-missing=true]"));
        Assert.Empty(cut.FindAll("[data-testid=field-error][data-field=TargetModules]"));
        Assert.Equal(2, cut.FindAll("[data-testid=field-targets] .mud-chip-selected").Count);
    }

    [Fact]
    public void A_name_the_model_lacks_is_removed_with_its_chips_close_button()
    {
        LoadRows("qwen2");
        State.Settings.TargetModules = ["q_proj", "foo_proj"];
        var cut = Render<SettingsStep>();

        Assert.Contains("foo_proj", cut.Find("[data-testid=field-error][data-field=TargetModules]").TextContent);
        cut.Find("[data-testid=field-targets] [data-target=foo_proj] .mud-chip-close-button").Click();
        Assert.Equal(["q_proj"], State.Settings.TargetModules);
        Assert.Empty(cut.FindAll("[data-testid=field-error][data-field=TargetModules]"));
    }
}

/// <summary>The settings page's measured time: a few real steps of the run on this machine, with the basis shown.</summary>
[Trait(Category.Name, Category.Slow)]
public sealed class SettingsStepMeasuredTimeTests : ComponentTestContext
{
    [Fact]
    public void Measure_times_real_steps_and_shows_the_projection_with_its_basis()
    {
        var file = Importer.Parse(File.ReadAllBytes(TestFiles.Sample("tutorial-qa.xlsx")), "tutorial-qa.xlsx");
        State.File = file;
        State.Dataset = new DatasetDraft(Importer.Build(file, new ImportSettings()));
        State.Settings.Source = ModelSource.Local;
        State.Settings.Model = TestFiles.Fixture("models/qwen2");
        State.Settings.Quantization = Quantization.None;
        var cut = Render<SettingsStep>();
        Assert.Equal("false", cut.Find("[data-testid=summary-time]").GetAttribute("data-measured"));
        Assert.Contains("粗估", cut.Find("[data-testid=summary-time]").TextContent);

        cut.Find("[data-testid=measure-time]").Click();

        cut.WaitForAssertion(() => Assert.Equal("true", cut.Find("[data-testid=summary-time]").GetAttribute("data-measured")), TimeSpan.FromMinutes(3));
        Assert.Contains("實測", cut.Find("[data-testid=summary-time]").TextContent);
        string basis = cut.Find("[data-testid=summary-time-basis]").TextContent;
        Assert.Contains("在 CPU 實際訓練了", basis); // 5 tutorial rows: one full step (4 rows) an epoch, so that step is the one timed
        Assert.Contains("這次訓練：6 步", basis);
        Assert.Empty(cut.FindAll("[data-testid=measure-error]"));

        // Another setting: the measurement no longer applies, and the page says so by going back to the rough figure.
        State.Settings.Epochs = 5;
        cut.Render();
        Assert.Equal("false", cut.Find("[data-testid=summary-time]").GetAttribute("data-measured"));
    }
}
