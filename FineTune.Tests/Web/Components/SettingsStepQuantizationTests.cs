using Bunit;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using FineTune.Web.Components.Pages.Wizard.Settings;
using FineTune.Web.Features.Data;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Settings;

namespace FineTune.Tests.Web.Components;

/// <summary>The settings step reads 4-bit from the settings (TrainingSettings.FourBit): the double quantization switch and the memory line follow it.</summary>
public sealed class SettingsStepQuantizationTests : ComponentTestContext
{
    [Fact]
    public void Double_quantization_and_the_memory_line_follow_the_4_bit_choice()
    {
        var file = Importer.Parse(File.ReadAllBytes(TestFiles.Sample("tutorial-qa.xlsx")), "tutorial-qa.xlsx");
        State.File = file;
        State.Dataset = new DatasetDraft(Importer.Build(file, new ImportSettings()));
        State.Settings.Source = ModelSource.Preset;
        State.Settings.Model = "Qwen/Qwen2.5-7B-Instruct"; // big enough that 4-bit weights show in the total
        var shape = ModelCatalog.FactsOf(State.Settings)!;
        string Memory(bool fourBit) => SettingsAdvisor.Gigabytes(TrainingEstimator.Memory(shape, State.Settings, fourBit).Total);

        var cut = Render<SettingsStep>();
        Assert.False(DoubleQuantizationSwitch(cut).HasAttribute("disabled"));
        Assert.Contains(Memory(fourBit: true), cut.Find("[data-testid=summary-memory]").TextContent);

        State.Settings.Quantization = Quantization.None;
        cut.Render();
        Assert.True(DoubleQuantizationSwitch(cut).HasAttribute("disabled"));
        Assert.Contains(Memory(fourBit: false), cut.Find("[data-testid=summary-memory]").TextContent);
        Assert.NotEqual(Memory(fourBit: true), Memory(fourBit: false));
    }

    private static AngleSharp.Dom.IElement DoubleQuantizationSwitch(IRenderedComponent<SettingsStep> cut) =>
        cut.Find("[data-testid=field-double-quant] input, input[data-testid=field-double-quant]");
}
