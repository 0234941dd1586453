using System.Globalization;
using Bunit;
using FineTune.Engine.Backend;
using FineTune.Tests.Web.Support;
using FineTune.Web.Components.Pages.Wizard.Settings;
using FineTune.Web.Features.Data;
using FineTune.Web.Features.Settings;
using TorchSharp;

namespace FineTune.Tests.Web.Components;

/// <summary>
/// On a machine with two GPUs the settings summary estimates the run's time on the GPUs it will train on: the rough line
/// says how many, where before it gave one GPU's time for a run on both.
/// </summary>
public sealed class SettingsStepGpusTests : ComponentTestContext
{
    private const long GB = 1_000_000_000;

    private static readonly BackendInfo TwoGpus = new(DeviceType.CUDA, "CUDA: 2 x Fake H200", "test backend", "test", "Fake H200", 141 * GB)
    {
        Gpus = [new GpuDevice(0, "Fake H200", 141 * GB), new GpuDevice(1, "Fake H200", 141 * GB)],
        SupportsBFloat16 = true,
    };

    public SettingsStepGpusTests() : base(TwoGpus)
    {
        Gpus = TwoGpus.Gpus;
        var file = Importer.Parse(File.ReadAllBytes(TestFiles.Sample("tutorial-qa.xlsx")), "tutorial-qa.xlsx");
        State.File = file;
        State.Dataset = new DatasetDraft(Importer.Build(file, new ImportSettings()));
        State.Settings.Source = ModelSource.Preset;
        State.Settings.Model = "Qwen/Qwen2.5-7B-Instruct";
    }

    private static AngleSharp.Dom.IElement Time(IRenderedComponent<SettingsStep> cut) => cut.Find("[data-testid=summary-time]");

    [Fact]
    public void The_rough_time_is_on_the_gpus_the_run_takes_and_says_how_many()
    {
        State.Settings.Gpus = GpuChoice.All;
        var cut = Render<SettingsStep>();
        Assert.Equal("2", Time(cut).GetAttribute("data-gpus"));
        Assert.StartsWith("時間：2 張 GPU 約 ", Time(cut).TextContent.Trim(), StringComparison.Ordinal);
        string onTwo = Time(cut).TextContent;

        State.Settings.Gpus = GpuChoice.One;
        cut.Render();
        Assert.Equal("1", Time(cut).GetAttribute("data-gpus"));
        Assert.StartsWith("時間：約 ", Time(cut).TextContent.Trim(), StringComparison.Ordinal);
        Assert.NotEqual(onTwo, Time(cut).TextContent);

        CultureInfo.CurrentCulture = CultureInfo.CurrentUICulture = new CultureInfo("en");
        State.Settings.Gpus = GpuChoice.All;
        cut.Render();
        Assert.Matches(@"^Time: about .+ on 2 GPUs \(rough: from the model's size alone, as if 2 GPUs were 2 times one, not measured;", Time(cut).TextContent.Trim());
    }
}
