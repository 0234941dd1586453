using System.Globalization;
using Bunit;
using FineTune.Engine.Training;
using FineTune.Engine.Backend;
using FineTune.Tests.Web.Support;
using FineTune.Web.Components.Pages.Wizard.Settings;
using FineTune.Web.Features.Data;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Settings;

namespace FineTune.Tests.Web.Components;

/// <summary>
/// The settings summary says whether the run will recompute its layers in backward (gradient checkpointing), decided as
/// the run decides it: against the smallest GPU the run may get, or by the 4-bit default where there is no GPU.
/// </summary>
public sealed class SettingsStepCheckpointingTests : ComponentTestContext
{
    private const long GB = 1_000_000_000;

    /// <summary>The tutorial's rows with the 7B preset in 4 bits (QLoRA), auto checkpointing.</summary>
    private void TutorialWith7B()
    {
        var file = Importer.Parse(File.ReadAllBytes(TestFiles.Sample("tutorial-qa.xlsx")), "tutorial-qa.xlsx");
        State.File = file;
        State.Dataset = new DatasetDraft(Importer.Build(file, new ImportSettings()));
        State.Settings.Source = ModelSource.Preset;
        State.Settings.Model = "Qwen/Qwen2.5-7B-Instruct";
    }

    /// <summary>The settings' run with every layer recomputed (a one-byte GPU holds nothing) and with none (a GPU that holds anything).</summary>
    private (FineTune.Engine.Models.ModelFacts Shape, long With, long Without) WithAndWithout()
    {
        var shape = ModelCatalog.FactsOf(State.Settings)!;
        return (shape, TrainingEstimator.Memory(shape, State.Settings, gpuBytes: 1).Total, TrainingEstimator.Memory(shape, State.Settings, gpuBytes: 1L << 50).Total);
    }

    private static AngleSharp.Dom.IElement Line(IRenderedComponent<SettingsStep> cut) => cut.Find("[data-testid=summary-checkpointing]");

    [Fact]
    public void Without_a_gpu_a_4_bit_run_keeps_the_default_on_and_says_why()
    {
        TutorialWith7B();
        var cut = Render<SettingsStep>();
        Assert.Equal("true", Line(cut).GetAttribute("data-on"));
        Assert.Equal("梯度檢查點：開啟（4-bit 基礎模型的預設；沒有 GPU 記憶體可依據）。", Line(cut).TextContent.Trim());

        State.Settings.Quantization = Quantization.None;
        cut.Render();
        Assert.Equal("false", Line(cut).GetAttribute("data-on"));
        Assert.Contains("16-bit 基礎模型的預設", Line(cut).TextContent, StringComparison.Ordinal);
    }

    [Fact]
    public void On_a_gpu_that_holds_the_run_without_it_checkpointing_is_off_with_the_numbers()
    {
        Gpus = [new GpuDevice(0, "Fake H200", 141 * GB)];
        TutorialWith7B();
        var cut = Render<SettingsStep>();
        var memory = TrainingEstimator.Memory(ModelCatalog.FactsOf(State.Settings)!, State.Settings, 141 * GB);
        Assert.False(memory.GradientCheckpointing);

        Assert.Equal("false", Line(cut).GetAttribute("data-on"));
        Assert.Equal($"梯度檢查點：關閉，GPU 記憶體足夠：不開啟約需 {SettingsAdvisor.Gigabytes(memory.Total)} GB，GPU 有 141.0 GB，每步較快。", Line(cut).TextContent.Trim());
        // The memory line is the estimate without checkpointing, the one the run will have.
        Assert.Contains(SettingsAdvisor.Gigabytes(memory.Total), cut.Find("[data-testid=summary-memory]").TextContent, StringComparison.Ordinal);
    }

    [Fact]
    public void On_a_gpu_that_holds_the_run_only_with_every_layer_recomputed_checkpointing_is_on_and_the_memory_line_counts_it()
    {
        TutorialWith7B();
        var (_, with, without) = WithAndWithout();
        Assert.True(with < without);
        long gpu = with;                                                         // 90% of it holds no layer fewer
        Gpus = [new GpuDevice(0, "Fake small GPU", gpu)];

        var cut = Render<SettingsStep>();
        Assert.Equal("true", Line(cut).GetAttribute("data-on"));
        Assert.Equal($"梯度檢查點：開啟：不開啟約需 {SettingsAdvisor.Gigabytes(without)} GB，超出 GPU 的 {SettingsAdvisor.Gigabytes(gpu)} GB 能穩定容納的量；反向傳播時重新計算每一層，較省記憶體、每步較慢。",
            Line(cut).TextContent.Trim());
        Assert.Contains(SettingsAdvisor.Gigabytes(with), cut.Find("[data-testid=summary-memory]").TextContent, StringComparison.Ordinal);
    }

    /// <summary>Between the two, the run recomputes only its first layers (as few as fit), and the summary says how many, in zh-TW and English.</summary>
    [Fact]
    public void On_a_gpu_between_the_two_only_the_first_layers_are_recomputed_and_the_summary_says_how_many()
    {
        TutorialWith7B();
        var (shape, with, without) = WithAndWithout();
        long gpu = (with + without) / 2;
        Gpus = [new GpuDevice(0, "Fake middle GPU", gpu)];
        var memory = TrainingEstimator.Memory(shape, State.Settings, gpu);
        var choice = memory.Checkpointing;
        Assert.Equal(CheckpointingReason.SomeLayers, choice.Reason);
        Assert.InRange(choice.Layers!.Value, 1, choice.OfLayers!.Value - 1);

        var cut = Render<SettingsStep>();
        Assert.Equal("false", Line(cut).GetAttribute("data-on"));
        Assert.Equal(choice.Layers.ToString(), Line(cut).GetAttribute("data-layers"));
        Assert.Equal($"梯度檢查點：只開啟前 {choice.Layers} 層（共 {choice.OfLayers} 層）：不開啟約需 {SettingsAdvisor.Gigabytes(without)} GB，超出 GPU 的 {SettingsAdvisor.Gigabytes(gpu)} GB 能穩定容納的量；反向傳播時只重新計算這幾層就放得下，每步比全部重新計算快。",
            Line(cut).TextContent.Trim());
        // The memory line is the estimate with those layers recomputed: within the GPU's usable share, below the run without.
        Assert.True(memory.Total <= gpu * TrainingMemory.UsableShare && memory.Total < without, $"{memory.Total} bytes on a {gpu}-byte GPU");
        Assert.Contains(SettingsAdvisor.Gigabytes(memory.Total), cut.Find("[data-testid=summary-memory]").TextContent, StringComparison.Ordinal);

        CultureInfo.CurrentCulture = CultureInfo.CurrentUICulture = new CultureInfo("en");
        cut.Render();
        Assert.Equal($"Gradient checkpointing: on for the first {choice.Layers} of {choice.OfLayers} layers: without it the run would need about {SettingsAdvisor.Gigabytes(without)} GB, too much of the GPU's {SettingsAdvisor.Gigabytes(gpu)} GB; recomputing only those layers in backward fits, with faster steps than recomputing all.",
            Line(cut).TextContent.Trim());
    }
}
