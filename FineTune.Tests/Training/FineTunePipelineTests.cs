using System.Globalization;
using System.Text;
using System.Text.Json.Nodes;
using FineTune.Bench;
using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Adapters;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Data;
using FineTune.Web.Features.Engine;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using FineTune.Web.Headless;
using FineTune.Web.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using FineTune.Engine.Training;

namespace FineTune.Tests.Training;

/// <summary>
/// The wizard's runner, the headless `train` command and the benchmark's `train` all run the engine's one
/// FineTunePipeline: the same fixture model, rows, settings and seed give byte-identical adapter files from each.
/// </summary>
[Trait(Category.Name, Category.Slow)]
public sealed class FineTunePipelineTests : IDisposable
{
    private readonly string _folder = TestPaths.NewTempFolder("pipeline-fronts");
    private static readonly string Model = TestFiles.Fixture("models/qwen2");

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    /// <summary>24 Q&amp;A rows: three optimizer steps at the benchmark's batch of 8.</summary>
    private string WriteCsv()
    {
        var csv = new StringBuilder("instruction,output\n");
        for (int i = 0; i < 24; i++)
        {
            var (question, answer) = QaTemplate.TutorialRows[i % QaTemplate.TutorialRows.Length];
            csv.Append(CultureInfo.InvariantCulture, $"\"{question} ({i})\",\"{answer.Replace("\"", "\"\"", StringComparison.Ordinal)}\"\n");
        }
        string path = Path.Combine(_folder, "rows.csv");
        File.WriteAllText(path, csv.ToString(), new UTF8Encoding(false));
        return path;
    }

    /// <summary>The rows as the `train` command imports them (the wizard's importer).</summary>
    private static IReadOnlyList<QaRow> Import(string csv)
    {
        var importer = new DataImporter(new ExcelTableReader(NullLogger<ExcelTableReader>.Instance));
        var file = importer.Parse(File.ReadAllBytes(csv), Path.GetFileName(csv));
        return importer.Build(file, new ImportSettings(DataImporter.GuessSheet(file), MaxSeqLength: 512)).UsableRows;
    }

    [Fact]
    public async Task Wizard_train_command_and_benchmark_write_byte_identical_adapters()
    {
        string csv = WriteCsv();
        var rows = Import(csv);
        Assert.Equal(24, rows.Count);

        // 1. The wizard: its settings, through the queue's runner.
        using var services = new ServiceCollection().AddLogging().AddHttpClient().BuildServiceProvider();
        var folders = new LocalModelFolders(new DataPaths(Path.Combine(_folder, "data"), [TestFiles.Fixture("models")]));
        var downloads = new ModelDownloadService(services.GetRequiredService<IHttpClientFactory>(), new FineTune.Engine.Hub.HubOptions(),
            NullLogger<ModelDownloadService>.Instance, NullLoggerFactory.Instance);
        var runner = new EngineTrainingRunner(new EngineModels(ComputeBackend.Initialize(), folders, downloads, NullLoggerFactory.Instance), NullLoggerFactory.Instance);
        var settings = new TrainingSettings
        {
            Source = ModelSource.Local, Model = Model,
            LoraR = 16, LoraAlpha = 32, LoraDropout = 0.05,
            Epochs = 1, BatchSize = 8, GradientAccumulationSteps = 1, LearningRate = 2e-4, WarmupRatio = 0,
            MaxSeqLength = 512, LoggingSteps = 1, SaveSteps = 0, EvalFraction = 0,
            Quantization = Quantization.Nf4, DoubleQuantization = true, Seed = 0,
        };
        string wizardRun = Path.Combine(_folder, "wizard");
        var wizard = await runner.RunAsync(new TrainingJob(1, settings, rows, wizardRun), new Progress<TrainingProgress>(), CancellationToken.None);
        // TensorBoard events beside loss.csv: one train/loss per logged step, the values loss.csv has.
        var losses = TfEvents.Scalars(Path.Combine(wizard.AdapterDirectory, TensorBoardLog.FolderName))["train/loss"];
        var csvLosses = File.ReadAllLines(Path.Combine(wizard.AdapterDirectory, "loss.csv")).Skip(1)
            .Select(l => l.Split(',')).Select(c => (long.Parse(c[0], CultureInfo.InvariantCulture), (float)double.Parse(c[2], CultureInfo.InvariantCulture))).ToList();
        Assert.Equal(csvLosses, losses);

        // 2. The headless command, with the same settings spelled as options.
        string zip = Path.Combine(_folder, "cli", "adapter.zip");
        using (var output = new StringWriter())
        using (var error = new StringWriter())
        {
            int code = TrainCommand.Run(["train", "--model", Model, "--data", csv, "--output", zip, "--qlora",
                "--rank", "16", "--alpha", "32", "--dropout", "0.05", "--epochs", "1", "--batch", "8", "--accum", "1", "--lr", "2e-4",
                "--warmup-ratio", "0", "--max-length", "512", "--validation", "0", "--seed", "0"], output, error);
            Assert.True(code == 0, error.ToString());
            Assert.Equal(3, output.ToString().Split('\n').Count(l => l.StartsWith("step ", StringComparison.Ordinal)));
        }

        // 3. The benchmark, on the same rows tokenized by the tutorial template (its qa.jsonl of prompt and answer ids).
        string jsonl = Path.Combine(_folder, "qa.jsonl");
        var template = PromptTemplate.Create(new PromptTemplateSettings(PromptStyle.Tutorial), TokenizerLoader.Load(Model));
        File.WriteAllLines(jsonl, rows.Select(row =>
        {
            var encoded = template.Encode(row);
            int p = encoded.PromptLength;
            return new JsonObject
            {
                ["prompt"] = new JsonArray([.. encoded.InputIds[..p].Select(id => JsonValue.Create(id))]),
                ["answer"] = new JsonArray([.. encoded.InputIds[p..].Select(id => JsonValue.Create(id))]),
            }.ToJsonString();
        }));
        string bench = Path.Combine(_folder, "bench");
        Assert.Equal(0, TrainBenchCommand.Run(["--model", Model, "--workload", "qa", "--data", jsonl, "--qlora", "--output", bench], ComputeBackend.Current));

        string[] adapterFiles = ["adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json"];
        foreach (string name in adapterFiles)
        {
            byte[] fromWizard = File.ReadAllBytes(Path.Combine(wizard.AdapterDirectory, name));
            Assert.Equal(fromWizard, File.ReadAllBytes(Path.Combine(TrainCommand.AdapterFolder(zip), name)));
            Assert.Equal(fromWizard, File.ReadAllBytes(Path.Combine(bench, name)));
        }
        // Trained, not the fresh adapter: lora_B starts at zero and three AdamW steps move it.
        var tensors = FineTune.Engine.Models.SafeTensors.LoadAll(Path.Combine(bench, "adapter_model.safetensors"));
        try
        {
            Assert.Contains(tensors, kv => kv.Key.EndsWith("lora_B.weight", StringComparison.Ordinal) && kv.Value.abs().max().item<float>() > 0);
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
    }
}
