using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.Engine;
using FineTune.Web.Features.Learning;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using FineTune.Web.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Xunit.Abstractions;

namespace FineTune.Tests.Web.Features.Learning;

/// <summary>"Did it learn?" on the tiny Qwen2 fixture (CPU): train a few steps on the tutorial sample, then check it with the real generator.</summary>
[Trait(Category.Name, Category.Slow)]
public sealed class LearningCheckFixtureTests(ITestOutputHelper output) : IDisposable
{
    private readonly RunTestServices _runs = new();
    private readonly ServiceProvider _services = new ServiceCollection().AddLogging().AddHttpClient().BuildServiceProvider();

    private static readonly QaRow[] Rows =
    [
        .. FineTune.Web.Features.Data.QaTemplate.TutorialRows.Select((r, i) => new QaRow(r.Question, r.Answer, SourceRow: i + 2)),
    ];

    public void Dispose()
    {
        _services.Dispose();
        _runs.Dispose();
    }

    private static TrainingSettings Settings() => new()
    {
        Source = ModelSource.Local,
        Model = TestFiles.Fixture("models/qwen2"),
        Quantization = Quantization.Nf4,
        LoggingSteps = 1,
        SaveSteps = 100,
        Epochs = 3,
        LearningRate = 1e-3,
    };

    /// <summary>Trains a run on <paramref name="rows"/> through the web's engine runner, then checks it twice with the real generator.</summary>
    private async Task<(LearningCheck First, LearningCheckReport Report, LearningCheck Second)> TrainAndCheckAsync(IReadOnlyList<QaRow> rows, TrainingSettings settings)
    {
        var folders = new LocalModelFolders(new DataPaths(_runs.Paths.Root, [TestFiles.Fixture("models")]));
        var downloads = new ModelDownloadService(_services.GetRequiredService<IHttpClientFactory>(), new FineTune.Engine.Hub.HubOptions(),
            NullLogger<ModelDownloadService>.Instance, NullLoggerFactory.Instance);
        var models = new EngineModels(ComputeBackend.Initialize(), folders, downloads, NullLoggerFactory.Instance);
        var run = await _runs.Store.CreateAsync(settings, rows, "tutorial.xlsx", null);
        var packager = new ArtifactPackager(_runs.Store);
        var outcome = await new EngineTrainingRunner(models, NullLoggerFactory.Instance)
            .RunAsync(new TrainingJob(run.Id, settings, rows, _runs.Store.RunDirectory(run.Id)), new Progress<FineTune.Engine.Training.TrainingProgress>(), CancellationToken.None);
        Assert.Equal(packager.AdapterDirectory(run.Id), outcome.AdapterDirectory);
        await _runs.Store.SetStatusAsync(run.Id, RunStatus.Completed);

        using var generator = new EngineChatGenerator(models);
        using var queue = new RunQueue(_runs.Store, _runs.Notifier, new ScriptedTrainingRunner(), NullLogger<RunQueue>.Instance);
        using var checks = new LearningCheckService(_runs.Contexts, _runs.Store, generator, packager, _runs.Notifier, queue, NullLogger<LearningCheckService>.Instance);
        var first = await checks.RunAsync(run.Id, CancellationToken.None);
        var report = (await checks.GetAsync(run.Id)).Report;
        var second = await checks.RunAsync(run.Id, CancellationToken.None);
        Assert.Equal(LearningCheckStatus.Completed, first.Status);
        Assert.NotNull(report);

        output.WriteLine($"answers changed: {report.ChangedCount} of {report.Rows.Count}; matching the expected answer: base {report.BaseScore:P0} → fine-tuned {report.FineTunedScore:P0}; verdict {report.Verdict}");
        foreach (var row in report.Rows)
            output.WriteLine($"{row.Question} | base {row.BaseScore:0.000} '{Short(row.BaseAnswer)}' | fine-tuned {row.FineTunedScore:0.000} '{Short(row.FineTunedAnswer)}' | changed {row.Changed}");
        return (first, report, second);
    }

    [Fact]
    public async Task After_training_the_check_answers_every_question_with_both_models_scores_them_and_is_deterministic()
    {
        var (first, report, second) = await TrainAndCheckAsync(Rows, Settings());

        Assert.Equal(Rows.Select(r => r.Instruction), report.Rows.Select(r => r.Question));
        Assert.Equal(Rows.Select(r => r.Output), report.Rows.Select(r => r.Expected));
        Assert.All(report.Rows, r => Assert.False(string.IsNullOrEmpty(r.BaseAnswer) || string.IsNullOrEmpty(r.FineTunedAnswer)));
        Assert.All(report.Rows, r => Assert.InRange(r.BaseScore, 0.0, 1.0));
        Assert.All(report.Rows, r => Assert.InRange(r.FineTunedScore, 0.0, 1.0));
        // The adapter is on for one answer and off for the other: after training, greedy answers differ.
        Assert.True(report.ChangedCount > 0, "no answer changed: was the adapter used?");
        // Greedy: the second check gives the very same answers.
        Assert.Equal(first.Answers.Select(a => (a.RowIndex, a.BaseAnswer, a.FineTunedAnswer)), second.Answers.Select(a => (a.RowIndex, a.BaseAnswer, a.FineTunedAnswer)));
    }

    [Fact]
    public async Task A_short_answer_trained_long_enough_reads_learned()
    {
        QaRow[] rows = [new("保固多久？", "一年。", SourceRow: 2)];
        var settings = Settings();
        settings.Epochs = 40;
        settings.GradientAccumulationSteps = 1;
        settings.LearningRate = 1e-2;
        settings.WarmupRatio = 0;
        settings.LoraDropout = 0;
        settings.EvalFraction = 0;

        var (_, report, _) = await TrainAndCheckAsync(rows, settings);

        Assert.Equal(1, report.ChangedCount);
        Assert.True(report.FineTunedScore > report.BaseScore, $"fine-tuned {report.FineTunedScore} vs base {report.BaseScore}");
        Assert.Equal(LearningVerdict.Learned, report.Verdict);
    }

    private static string Short(string text) => (text.Length > 40 ? text[..40] + "…" : text).ReplaceLineEndings(" ");
}
