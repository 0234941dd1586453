using Bunit;
using FineTune.Tests.Web.Features.Runs;
using FineTune.Web.Components.Pages.History;
using FineTune.Web.Components.Pages.Wizard;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Data;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using FineTune.Web.Features.Wizard;
using Microsoft.AspNetCore.Components;
using Microsoft.Extensions.DependencyInjection;

namespace FineTune.Tests.Web.Components;

public sealed class HistoryPageTests : ComponentTestContext
{
    [Fact]
    public async Task Lists_runs_compares_curves_and_saves_notes()
    {
        var first = await Runs.Store.CreateAsync(new TrainingSettings(), RunStoreTests.Rows, "a.xlsx", null);
        var second = await Runs.Store.CreateAsync(new TrainingSettings { Model = "Qwen/Qwen2.5-1.5B-Instruct" }, RunStoreTests.Rows, "b.csv", null);
        foreach (var (id, loss) in new[] { (first.Id, 2.0), (first.Id, 1.0), (second.Id, 1.5) })
            await Runs.Store.AddMetricAsync(new RunMetric { RunId = id, Step = loss > 1.2 && id == first.Id ? 1 : 2, Loss = loss, At = DateTime.UtcNow });
        await Runs.Store.SetStatusAsync(first.Id, RunStatus.Completed);

        var cut = Render<HistoryPage>();
        cut.WaitForAssertion(() => Assert.Equal(2, cut.FindAll("[data-testid=history-table] tbody tr").Count));
        var rows = cut.FindAll("[data-testid=history-table] tbody tr");
        Assert.Contains("Qwen/Qwen2.5-1.5B-Instruct", rows[0].TextContent); // newest first
        Assert.Contains("已完成", rows[1].TextContent);
        Assert.Contains("a.xlsx (2)", rows[1].TextContent);

        cut.FindAll("[data-testid=history-table] tbody tr")[1].QuerySelector("input[type=checkbox]")!.Change(true);
        cut.FindAll("[data-testid=history-table] tbody tr")[0].QuerySelector("input[type=checkbox]")!.Change(true);
        cut.WaitForAssertion(() => Assert.Equal(2, cut.FindAll("polyline").Count));
        Assert.Equal("3", cut.Find("[data-testid=loss-chart]").GetAttribute("data-points"));

        cut.FindAll("[data-testid=history-table] tbody tr")[1].QuerySelector("input[type=text], input:not([type])")!.Change("第一次試跑");
        cut.WaitForAssertion(async () => Assert.Equal("第一次試跑", (await Runs.Store.GetAsync(first.Id))!.Notes));
    }
}

public sealed class WizardPageTests : ComponentTestContext
{
    [Fact]
    public async Task Opening_a_run_url_shows_its_train_step_and_locks_the_earlier_steps()
    {
        var run = await Runs.Store.CreateAsync(new TrainingSettings { Epochs = 7 }, RunStoreTests.Rows, "a.xlsx", null);

        var cut = Render<WizardPage>(p => p.Add(c => c.RunId, run.Id));

        cut.WaitForAssertion(() => Assert.Contains($"第 {run.Id} 次", cut.Find("[data-testid=step-train]").TextContent));
        Assert.Equal(run.Id, State.RunId);
        Assert.Equal(7, State.Settings.Epochs);
        Assert.False(State.CanOpen(WizardStep.Data));
        Assert.True(State.CanOpen(WizardStep.Download));
        var tabs = cut.FindAll("[role=tab]");
        Assert.True(tabs[0].HasAttribute("disabled"));
        Assert.False(tabs[4].HasAttribute("disabled"));
    }

    [Fact]
    public void An_unknown_run_says_so_and_starts_over()
    {
        var cut = Render<WizardPage>(p => p.Add(c => c.RunId, 404));
        cut.WaitForAssertion(() => Assert.Contains("找不到訓練 #404", cut.Find("[data-testid=run-not-found]").TextContent));
        Assert.Null(State.RunId);
        Assert.Contains("選擇基礎模型", cut.Find("[data-testid=step-model]").TextContent);
    }

    [Fact]
    public async Task A_new_circuit_of_the_same_browser_reopens_the_wizard_where_it_was()
    {
        var browser = new BrowserId("0123456789abcdef0123456789abcdef");
        var earlier = new WizardState { Settings = new TrainingSettings { LoraR = 8 } };
        earlier.File = Importer.Parse(File.ReadAllBytes(TestFiles.Sample("tutorial-qa.xlsx")), "tutorial-qa.xlsx");
        earlier.OriginalFile = File.ReadAllBytes(TestFiles.Sample("tutorial-qa.xlsx"));
        earlier.Dataset = new DatasetDraft(Importer.Build(earlier.File, new ImportSettings()));
        earlier.Dataset.SetExcluded(2, true);
        earlier.Step = WizardStep.Settings;
        await Services.GetRequiredService<WizardDraftStore>().SaveAsync(browser, earlier);

        var cut = Render<WizardPage>(p => p.AddCascadingValue(browser));

        cut.WaitForAssertion(() => Assert.NotNull(cut.Find("[data-testid=step-settings]")), TimeSpan.FromSeconds(20));
        Assert.Equal(8, State.Settings.LoraR);
        Assert.Equal(4, State.Dataset!.FinalRows.Count);
        Assert.Equal("tutorial-qa.xlsx", State.File!.FileName);
    }

    [Fact]
    public async Task Rerun_starts_from_the_earlier_settings_and_rows_at_the_settings_step()
    {
        var run = await Runs.Store.CreateAsync(new TrainingSettings { LoraR = 32, Epochs = 2 }, RunStoreTests.Rows, "a.xlsx", [9, 9]);
        var navigation = Services.GetService(typeof(NavigationManager)) as NavigationManager;
        navigation!.NavigateTo($"/?from={run.Id}");

        var cut = Render<WizardPage>();

        // Loading reads the run's files and counts tokens: more than bUnit's default second on a busy machine.
        cut.WaitForAssertion(() => Assert.NotNull(cut.Find("[data-testid=step-settings]")), TimeSpan.FromSeconds(20));
        Assert.Null(State.RunId);
        Assert.Equal((32, 2), (State.Settings.LoraR, State.Settings.Epochs));
        Assert.Equal(RunStoreTests.Rows.Select(r => (r.Instruction, r.Output, r.Input, r.System)),
            State.Dataset!.FinalRows.Select(r => (r.Instruction, r.Output, r.Input, r.System)));
        Assert.Equal(new byte[] { 9, 9 }, State.OriginalFile);
        Assert.Equal("a.xlsx", State.File!.FileName);
    }
}
