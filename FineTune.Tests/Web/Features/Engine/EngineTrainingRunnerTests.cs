using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Chat;
using FineTune.Web.Features.Engine;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using FineTune.Web.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using FineTune.Engine.Training;

namespace FineTune.Tests.Web.Features.Engine;

/// <summary>The web's engine wiring on the tiny Qwen2 fixture (CPU): training, checkpoints, resume, cancel, chat.</summary>
[Trait(Category.Name, Category.Slow)]
public sealed class EngineTrainingRunnerTests : IDisposable
{
    private readonly string _output = Directory.CreateTempSubdirectory("finetune-engine-").FullName;
    private readonly ServiceProvider _services;
    private readonly EngineModels _models;

    private static readonly QaRow[] Rows =
    [
        .. FineTune.Web.Features.Data.QaTemplate.TutorialRows.Select((r, i) => new QaRow(r.Question, r.Answer, SourceRow: i + 2)),
    ];

    public EngineTrainingRunnerTests()
    {
        _services = new ServiceCollection().AddLogging().AddHttpClient().BuildServiceProvider();
        var folders = new LocalModelFolders(new DataPaths(Path.Combine(_output, "data"), [TestFiles.Fixture("models")]));
        var downloads = new ModelDownloadService(_services.GetRequiredService<IHttpClientFactory>(), new FineTune.Engine.Hub.HubOptions(),
            NullLogger<ModelDownloadService>.Instance, NullLoggerFactory.Instance);
        _models = new EngineModels(ComputeBackend.Initialize(), folders, downloads, NullLoggerFactory.Instance);
    }

    public void Dispose()
    {
        _services.Dispose();
        Directory.Delete(_output, recursive: true);
    }

    private static TrainingSettings Settings() => new()
    {
        Source = ModelSource.Local,
        Model = TestFiles.Fixture("models/qwen2"),
        Quantization = Quantization.Nf4,
        LoggingSteps = 1,
        SaveSteps = 2,
        Epochs = 3,
        LearningRate = 1e-3,
    };

    private sealed class Recorder : IProgress<TrainingProgress>
    {
        public List<TrainingProgress> Reports { get; } = [];
        public Action<TrainingProgress>? OnReport { get; init; }
        public void Report(TrainingProgress value)
        {
            lock (Reports) Reports.Add(value);
            OnReport?.Invoke(value);
        }
    }

    [Theory]
    [InlineData(true, "weight_absmax_codes")]
    [InlineData(false, "weight_absmax")]
    public void The_double_quantization_switch_reaches_the_nf4_weights(bool doubleQuantization, string absmaxBuffer)
    {
        using var model = _models.Load(TestFiles.Fixture("models/qwen2"), TorchSharp.torch.ScalarType.Float32, fourBit: true, doubleQuantization);
        var q = model.NamedLinears().First(l => l.Name.EndsWith("q_proj", StringComparison.Ordinal)).Layer;
        Assert.True(q.IsQuantized);
        Assert.Equal(doubleQuantization, q.QuantizedState!.DoubleQuantized);
        Assert.Contains(absmaxBuffer, q.named_buffers().Select(b => b.name));
    }

    [Fact]
    public void Evaluation_runs_about_ten_times_per_run_not_at_every_logging_step()
    {
        var runner = new EngineTrainingRunner(_models, NullLoggerFactory.Instance);
        var rows = Enumerable.Range(1, 20_000).Select(i => new QaRow($"q{i}", $"a{i}", SourceRow: i)).ToArray();
        var settings = new TrainingSettings { LoggingSteps = 10 }; // the tutorial: batch 1 x accumulation 4, 3 epochs, 10 % eval

        var job = runner.ToFineTuneJob(new TrainingJob(1, settings, rows, _output), "/models/m");

        int total = TrainingEstimator.Plan(rows.Length, settings).TotalSteps; // 18,000 train rows / 4 x 3 = 13,500 steps
        Assert.Equal(13_500, total);
        Assert.Equal(1_350, job.Training.EvalSteps);
        Assert.Equal(10, job.Training.LoggingSteps);
    }

    [Fact]
    public void The_prompt_template_setting_is_stored_with_the_run_and_reaches_the_job()
    {
        var settings = Settings();
        Assert.Equal(new FineTune.Engine.Tokenization.PromptTemplateSettings(FineTune.Engine.Tokenization.PromptStyle.Tutorial), settings.ToPromptTemplate()); // default
        settings.PromptTemplate = FineTune.Engine.Tokenization.PromptStyle.Custom;
        settings.CustomTemplate = "問：{instruction}\n答：{output}";
        var stored = TrainingSettings.FromJson(settings.ToJson());
        Assert.Contains("\"PromptTemplate\": \"Custom\"", settings.ToJson());

        var job = new EngineTrainingRunner(_models, NullLoggerFactory.Instance).ToFineTuneJob(new TrainingJob(1, stored, Rows, _output), stored.Model);
        Assert.Equal(new FineTune.Engine.Tokenization.PromptTemplateSettings(FineTune.Engine.Tokenization.PromptStyle.Custom, "問：{instruction}\n答：{output}"), job.Template);
        Assert.Equal("問：{instruction}\n答：{output}", job.TemplateName); // what the model card and settings.json say

        // The settings step's token counts use the same template: the custom layout is shorter than the tutorial's.
        var counter = new TokenCounter(NullLogger<TokenCounter>.Instance);
        int custom = counter.For(stored)(Rows[0]);
        stored.PromptTemplate = FineTune.Engine.Tokenization.PromptStyle.Tutorial;
        Assert.True(custom < counter.For(stored)(Rows[0]), $"custom {custom} tokens");
    }

    [Fact]
    public async Task Trains_reports_every_step_and_writes_a_peft_adapter()
    {
        var runner = new EngineTrainingRunner(_models, NullLoggerFactory.Instance);
        var checkpointsWhenReported = new List<(int Step, string Path, bool Complete)>();
        var progress = new Recorder
        {
            OnReport = p =>
            {
                if (p.CheckpointPath is { } path)
                    checkpointsWhenReported.Add((p.Step, Path.GetFileName(path), File.Exists(Path.Combine(path, Checkpoints.StateFile))));
            },
        };

        var outcome = await runner.RunAsync(new TrainingJob(1, Settings(), Rows, _output), progress, CancellationToken.None);

        Assert.Equal(Enumerable.Range(1, 6), progress.Reports.Select(r => r.Step));
        Assert.All(progress.Reports, r => Assert.True(r.Loss is > 0 && double.IsFinite(r.Loss.Value)));
        Assert.All(progress.Reports, r => Assert.Equal(6, r.TotalSteps));
        // The trainer names each checkpoint once, in the report of the step that saved it, after it is complete on disk.
        Assert.Equal(new[] { (2, "checkpoint-2", true), (4, "checkpoint-4", true), (6, "checkpoint-6", true) }, checkpointsWhenReported);
        Assert.All(progress.Reports, r => Assert.True(r.GradNorm is > 0 && r.LearningRate is not null));
        Assert.True(File.Exists(Path.Combine(outcome.AdapterDirectory, "adapter_config.json")));
        Assert.True(File.Exists(Path.Combine(outcome.AdapterDirectory, "adapter_model.safetensors")));
        Assert.True(File.Exists(Path.Combine(outcome.AdapterDirectory, "tokenizer.json")));
        Assert.Equal(progress.Reports[^1].Loss!.Value, outcome.FinalTrainLoss!.Value, 6);
        Assert.NotNull(outcome.LastCheckpoint);

        // The fine-tuned model answers through the same prompt layout, and the base model too (adapter off).
        using var chat = new EngineChatGenerator(_models);
        var request = new ChatRequest(Settings().Model, ModelSource.Local, outcome.AdapterDirectory, ChatRequest.Question("可以退貨嗎？"), MaxNewTokens: 8, Temperature: 0, FourBit: true);
        var tuned = new List<string>();
        await foreach (var piece in chat.StreamAsync(request, CancellationToken.None)) tuned.Add(piece.Text);
        var basePieces = new List<string>();
        await foreach (var piece in chat.StreamAsync(request with { AdapterDirectory = null }, CancellationToken.None)) basePieces.Add(piece.Text);
        Assert.NotEmpty(string.Concat(tuned) + string.Concat(basePieces));
    }

    [Fact]
    public async Task Cancelling_stops_training_and_resuming_from_the_checkpoint_finishes_it()
    {
        var runner = new EngineTrainingRunner(_models, NullLoggerFactory.Instance);
        using var cancel = new CancellationTokenSource();
        string? checkpoint = null;
        var first = new Recorder
        {
            OnReport = p =>
            {
                checkpoint = p.CheckpointPath ?? checkpoint;
                if (p.Step >= 3) cancel.Cancel();
            },
        };

        await Assert.ThrowsAnyAsync<OperationCanceledException>(() => runner.RunAsync(new TrainingJob(2, Settings(), Rows, _output), first, cancel.Token));
        Assert.NotNull(checkpoint);
        Assert.True(first.Reports.Max(r => r.Step) < 6);

        var second = new Recorder();
        var outcome = await runner.RunAsync(new TrainingJob(2, Settings(), Rows, _output, checkpoint), second, CancellationToken.None);

        Assert.Equal(3, second.Reports.Min(r => r.Step));   // resumed after step 2's checkpoint
        Assert.Equal(6, second.Reports.Max(r => r.Step));
        Assert.True(File.Exists(Path.Combine(outcome.AdapterDirectory, "adapter_model.safetensors")));
    }
}
