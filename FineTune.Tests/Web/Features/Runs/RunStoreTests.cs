using FineTune.Engine.Data;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;

namespace FineTune.Tests.Web.Features.Runs;

public sealed class RunStoreTests : IDisposable
{
    private readonly RunTestServices _services = new();
    private RunStore Store => _services.Store;

    internal static readonly QaRow[] Rows =
    [
        new("可以退貨嗎？", "七天內可以。", SourceRow: 2),
        new("翻譯", "你好", Input: "hello", System: "be brief", SourceRow: 3),
    ];

    public void Dispose() => _services.Dispose();

    [Fact]
    public async Task Creates_a_queued_run_with_its_files()
    {
        var settings = new TrainingSettings { Model = "Qwen/Qwen2.5-1.5B-Instruct", Epochs = 5 };
        var run = await Store.CreateAsync(settings, Rows, "faq.xlsx", [1, 2, 3]);

        var stored = await Store.GetAsync(run.Id);
        Assert.NotNull(stored);
        Assert.Equal(RunStatus.Queued, stored.Status);
        Assert.Equal(("Qwen/Qwen2.5-1.5B-Instruct", 2, "faq.xlsx"), (stored.Model, stored.DatasetRows, stored.DatasetFileName));
        Assert.Equal(64, stored.DatasetHash.Length);
        Assert.Equal(5, TrainingSettings.FromJson(stored.SettingsJson).Epochs);

        string folder = Store.RunDirectory(run.Id);
        Assert.Equal(new byte[] { 1, 2, 3 }, File.ReadAllBytes(Path.Combine(folder, "original", "faq.xlsx")));
        Assert.Equal(5, TrainingSettings.FromJson(File.ReadAllText(Path.Combine(folder, RunStore.SettingsFile))).Epochs);
        Assert.Equal(Rows, await Store.ReadDatasetAsync(run.Id));
    }

    [Fact]
    public async Task Status_changes_stamp_start_and_end_and_metrics_keep_the_last_losses()
    {
        var run = await Store.CreateAsync(new TrainingSettings(), Rows, "d.csv", null);
        await Store.SetStatusAsync(run.Id, RunStatus.Training);
        await Store.AddMetricAsync(new RunMetric { RunId = run.Id, Step = 10, Epoch = 0.5, Loss = 2.5, LearningRate = 2e-4, At = DateTime.UtcNow });
        await Store.AddMetricAsync(new RunMetric { RunId = run.Id, Step = 20, Epoch = 1, Loss = 1.5, EvalLoss = 1.7, At = DateTime.UtcNow });
        var done = await Store.SetStatusAsync(run.Id, RunStatus.Completed);

        Assert.NotNull(done.StartedAt);
        Assert.NotNull(done.EndedAt);
        Assert.True(done.EndedAt >= done.StartedAt);
        var stored = (await Store.GetAsync(run.Id))!;
        Assert.Equal((1.5, 1.7, 20), (stored.FinalTrainLoss!.Value, stored.FinalEvalLoss!.Value, stored.LastStep));
        Assert.Equal(new[] { 10, 20 }, (await Store.MetricsAsync(run.Id)).Select(m => m.Step));
    }

    [Fact]
    public async Task Start_up_marks_runs_left_training_as_interrupted()
    {
        var training = await Store.CreateAsync(new TrainingSettings(), Rows, "a.csv", null);
        var completed = await Store.CreateAsync(new TrainingSettings(), Rows, "b.csv", null);
        await Store.SetStatusAsync(training.Id, RunStatus.Training);
        await Store.UpdateAsync(training.Id, r => r.LastCheckpoint = "checkpoint-50");
        await Store.SetStatusAsync(completed.Id, RunStatus.Completed);

        var marked = await Store.MarkInterruptedAsync();

        Assert.Equal(new[] { training.Id }, marked);
        var run = (await Store.GetAsync(training.Id))!;
        Assert.Equal((RunStatus.Interrupted, "checkpoint-50"), (run.Status, run.LastCheckpoint));
        Assert.Equal(RunStatus.Completed, (await Store.GetAsync(completed.Id))!.Status);
    }

    [Fact]
    public async Task Delete_removes_the_row_the_metrics_and_the_files()
    {
        var run = await Store.CreateAsync(new TrainingSettings(), Rows, "d.csv", [1]);
        await Store.AddMetricAsync(new RunMetric { RunId = run.Id, Step = 1, Loss = 1, At = DateTime.UtcNow });
        string folder = Store.RunDirectory(run.Id);
        Directory.CreateDirectory(Path.Combine(folder, "adapter"));
        File.WriteAllText(Path.Combine(folder, "adapter", "adapter_config.json"), "{}");

        await Store.DeleteAsync(run.Id);

        Assert.Null(await Store.GetAsync(run.Id));
        Assert.Empty(await Store.MetricsAsync(run.Id));
        Assert.False(Directory.Exists(folder));
    }

    [Fact]
    public async Task A_training_run_cannot_be_deleted()
    {
        var run = await Store.CreateAsync(new TrainingSettings(), Rows, "d.csv", null);
        await Store.SetStatusAsync(run.Id, RunStatus.Training);
        await Assert.ThrowsAsync<InvalidOperationException>(() => Store.DeleteAsync(run.Id));
        Assert.True(Directory.Exists(Store.RunDirectory(run.Id)));
    }

    [Fact]
    public async Task Notes_are_trimmed_and_blank_notes_cleared()
    {
        var run = await Store.CreateAsync(new TrainingSettings(), Rows, "d.csv", null);
        Assert.Equal("第一次", (await Store.SetNotesAsync(run.Id, "  第一次 ")).Notes);
        Assert.Null((await Store.SetNotesAsync(run.Id, "  ")).Notes);
    }

    [Fact]
    public async Task An_empty_dataset_is_refused()
    {
        await Assert.ThrowsAsync<ArgumentException>(() => Store.CreateAsync(new TrainingSettings(), [], "d.csv", null));
    }
}
