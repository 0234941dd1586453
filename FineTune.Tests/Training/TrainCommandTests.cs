using System.IO.Compression;
using System.Text.Json.Nodes;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Generation;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;
using FineTune.Engine.Training;
using FineTune.Tests.Adapters;
using FineTune.Tests.Support;
using FineTune.Web.Features.Data;
using FineTune.Web.Headless;

namespace FineTune.Tests.Training;

public class TrainCommandTests
{
    public TrainCommandTests() => _ = ComputeBackend.Current;

    private static string Fixture(string name) => TestPaths.InRepo("FineTune.Tests", "Fixtures", "models", name);

    private static string TutorialXlsx() => TestPaths.InRepo("samples", "tutorial-qa.xlsx");

    private static string TutorialCsv() => TestPaths.InRepo("samples", "tutorial-qa.csv");

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        using var output = new StringWriter();
        using var error = new StringWriter();
        int code = TrainCommand.Run(args, output, error);
        return (code, output.ToString(), error.ToString());
    }

    [Fact]
    public void Bad_input_exits_with_2_and_says_what_is_wrong()
    {
        string folder = TestPaths.NewTempFolder("train-bad");
        try
        {
            string zip = Path.Combine(folder, "a.zip");
            var missingModel = Run("train", "--model", Path.Combine(folder, "nope"), "--data", TutorialCsv(), "--output", zip);
            Assert.Equal(2, missingModel.Code);
            Assert.Contains("--model", missingModel.Err);

            var badNumber = Run("train", "--model", Fixture("qwen2"), "--data", TutorialCsv(), "--output", zip, "--lr", "fast");
            Assert.Equal(2, badNumber.Code);
            Assert.Contains("--lr must be a number", badNumber.Err);

            var badCheckpointing = Run("train", "--model", Fixture("qwen2"), "--data", TutorialCsv(), "--output", zip, "--gradient-checkpointing", "yes");
            Assert.Equal(2, badCheckpointing.Code);
            Assert.Contains("--gradient-checkpointing must be auto, on or off", badCheckpointing.Err);

            var notZip = Run("train", "--model", Fixture("qwen2"), "--data", TutorialCsv(), "--output", Path.Combine(folder, "a.bin"));
            Assert.Equal(2, notZip.Code);

            string empty = Path.Combine(folder, "empty.csv");
            File.WriteAllText(empty, "instruction,output\n");
            var noRows = Run("train", "--model", Fixture("qwen2"), "--data", empty, "--output", zip);
            Assert.Equal(2, noRows.Code);

            var qwenV1 = Run("train", "--model", Fixture("qwen-v1"), "--data", TutorialCsv(), "--output", zip, "--epochs", "1");
            Assert.Equal(2, qwenV1.Code);
            Assert.Contains("c_attn, c_proj", qwenV1.Err);
            Assert.False(File.Exists(zip));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Theory]
    [InlineData(null, null)]
    [InlineData("auto", null)]
    [InlineData("on", true)]
    [InlineData("off", false)]
    public void Gradient_checkpointing_option_reaches_the_training_options(string? value, bool? expected)
    {
        string[] args = ["train", "--model", Fixture("qwen2"), "--data", TutorialCsv(), "--output", "a.zip"];
        if (value is not null) args = [.. args, "--gradient-checkpointing", value];
        Assert.Equal(expected, TrainCommand.Parse(args).Settings.ToTrainingOptions().GradientCheckpointing);
    }

    [Fact]
    public void Options_bind_to_the_wizard_settings_and_map_to_the_engine_job_with_the_command_line_defaults()
    {
        string model = Fixture("qwen2");
        var minimal = TrainCommand.Parse(["train", "--model", model, "--data", TutorialCsv(), "--output", "a.zip"]);
        var job = minimal.Settings.ToFineTuneJob(model, [], "out", "ckpt");
        // The command's defaults (as its help lists them), unchanged since it parsed its own options.
        Assert.Equal(new TrainingOptions
        {
            Epochs = 3, LearningRate = 2e-4, BatchSize = 1, GradientAccumulationSteps = 4, SaveSteps = 0, SaveTotalLimit = 2, WarmupRatio = 0,
            WarmupSteps = 0, Schedule = LearningRateScheduleKind.Linear, Seed = 42, LoggingSteps = 1, Layout = BatchLayout.Packed, GradientCheckpointing = null,
        }, job.Training);
        Assert.Equal((16, 32.0, 0.05), (job.Lora.Rank, job.Lora.Alpha, job.Lora.Dropout));
        Assert.Equal(LoraSettings.DefaultTargetModules, job.Lora.Targets);
        Assert.Equal((1024, 0.1, true, false, true), (job.MaxSeqLength, job.ValidationFraction, job.AnswerOnlyLoss, job.FourBit, job.DoubleQuantization));
        Assert.Equal(new PromptTemplateSettings(PromptStyle.Tutorial), job.Template);
        Assert.Null(job.BaseModelName); // a folder: the adapter names what its config.json says

        var all = TrainCommand.Parse(["train", "--model", "Qwen/Qwen2.5-0.5B-Instruct", "--data", TutorialCsv(), "--output", "a.zip", "--epochs", "0.5",
            "--alpha", "8", "--targets", "q_proj, v_proj", "--qlora", "--whole-text", "--template", "Q: {instruction}\\nA: {output}", "--schedule", "cosine",
            "--layout", "grouped", "--warmup-steps", "3", "--max-length", "256", "--validation", "0", "--resume", "auto", "--merged", "m"]);
        var hubJob = all.Settings.ToFineTuneJob("/cache/snapshot", [], "out", "ckpt");
        Assert.Equal("Qwen/Qwen2.5-0.5B-Instruct", hubJob.BaseModelName);
        Assert.Equal((0.5, LearningRateScheduleKind.Cosine, BatchLayout.LengthGrouped, 3), (hubJob.Training.Epochs, hubJob.Training.Schedule, hubJob.Training.Layout, hubJob.Training.WarmupSteps));
        Assert.Equal(8.0, hubJob.Lora.Alpha);
        Assert.Equal(["q_proj", "v_proj"], hubJob.Lora.Targets);
        Assert.Equal((256, 0.0, false, true), (hubJob.MaxSeqLength, hubJob.ValidationFraction, hubJob.AnswerOnlyLoss, hubJob.FourBit));
        Assert.Equal(new PromptTemplateSettings(PromptStyle.Custom, "Q: {instruction}\nA: {output}"), hubJob.Template);
        Assert.Equal(("auto", "m"), (all.Resume, all.Merged));
    }

    [Fact]
    public void Double_quantization_is_on_unless_turned_off()
    {
        string[] args = ["train", "--model", Fixture("qwen2"), "--data", TutorialCsv(), "--output", "a.zip", "--qlora"];
        Assert.True(TrainCommand.Parse(args).Settings.ToFineTuneJob("m", [], "o", "c").DoubleQuantization);
        Assert.False(TrainCommand.Parse([.. args, "--no-double-quant"]).Settings.ToFineTuneJob("m", [], "o", "c").DoubleQuantization);
    }

    [Fact]
    public void Base_model_name_is_the_hub_id_from_config_or_the_folder()
    {
        string folder = TestPaths.NewTempFolder("base-name");
        try
        {
            File.WriteAllText(Path.Combine(folder, "config.json"), "{\"_name_or_path\": \"Qwen/Qwen2.5-0.5B-Instruct\"}");
            Assert.Equal("Qwen/Qwen2.5-0.5B-Instruct", PeftAdapter.BaseModelName(folder));
            File.WriteAllText(Path.Combine(folder, "config.json"), "{\"_name_or_path\": \"/home/me/models/x\"}");
            Assert.Equal(Path.GetFullPath(folder), PeftAdapter.BaseModelName(folder));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void Qlora_run_writes_a_peft_zip_with_tokenizer_card_losses_and_settings()
    {
        string folder = TestPaths.NewTempFolder("train-qlora");
        try
        {
            string zip = Path.Combine(folder, "adapter.zip");
            var (code, output, error) = Run("train", "--model", Fixture("qwen2"), "--data", TutorialCsv(), "--output", zip,
                "--epochs", "2", "--qlora", "--rank", "4", "--alpha", "8", "--save-steps", "2", "--merged", Path.Combine(folder, "merged"));
            Assert.True(code == 0, error);
            // 5 rows, batch 1 × 4 → 2 steps per epoch, 4 in all: one progress line each
            Assert.Equal(4, output.Split('\n').Count(l => l.StartsWith("step ", StringComparison.Ordinal)));
            Assert.Contains("step 4/4", output);

            using var archive = ZipFile.OpenRead(zip);
            var names = archive.Entries.Select(e => e.FullName).ToHashSet();
            foreach (var expected in new[] { "adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "tokenizer_config.json", "README.md", "loss.csv", "settings.json" })
                Assert.Contains(expected, names);

            string adapter = TrainCommand.AdapterFolder(zip);
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, "adapter_config.json")))!;
            Assert.Equal(4, (int)config["r"]!);
            var tensors = SafeTensors.LoadAll(Path.Combine(adapter, "adapter_model.safetensors"));
            Assert.Contains("base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight", tensors.Keys);
            Assert.Equal(2 * 4 * 2, tensors.Count); // 2 layers × q/k/v/o × A/B
            foreach (var t in tensors.Values) t.Dispose();
            Assert.Equal(5, File.ReadAllLines(Path.Combine(adapter, "loss.csv")).Length); // header + 4 steps
            Assert.Contains("QLoRA", File.ReadAllText(Path.Combine(adapter, "README.md")));
            Assert.True(Directory.Exists(adapter + ".checkpoints"));

            // The merged export is an HF folder our loader reads back.
            using var merged = ModelLoader.Load(Path.Combine(folder, "merged"));
            Assert.All(merged.NamedLinears(), l => Assert.False(l.Layer.IsQuantized));
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>
    /// The acceptance test of the issue: the tutorial's five rows (its Excel workbook), trained through the `train` command on a tiny
    /// fixture model, are answered word for word by greedy generation with the adapter loaded back from the zip's folder.
    /// </summary>
    [Fact]
    [Trait(Category.Name, Category.Slow)]
    public void Tutorial_rows_are_learned_until_greedy_answers_reproduce_them()
    {
        string folder = TestPaths.NewTempFolder("train-tutorial");
        try
        {
            string zip = Path.Combine(folder, "tutorial.zip");
            string model = Fixture("qwen2");
            var (code, _, error) = Run("train", "--model", model, "--data", TutorialXlsx(), "--output", zip,
                "--epochs", TutorialEpochs, "--lr", "3e-3", "--rank", "32", "--alpha", "32", "--dropout", "0", "--batch", "1", "--accum", "1",
                "--schedule", "constant", "--targets", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head", "--logging-steps", "50");
            Assert.True(code == 0, error);

            var tokenizer = TokenizerLoader.Load(model);
            using var lm = ModelLoader.Load(model);
            PeftAdapter.Load(TrainCommand.AdapterFolder(zip), lm.NamedLinears());
            var generator = new Generator(lm);
            var template = PromptTemplate.Create(new PromptTemplateSettings(PromptStyle.Tutorial), tokenizer);
            foreach (var (question, answer) in QaTemplate.TutorialRows)
            {
                var ids = template.EncodePrompt(new QaRow(question, ""));
                int budget = tokenizer.Encode(answer, addSpecialTokens: false).Count + 8;
                var produced = generator.Generate(ids, GenerationSettings.Greedy(budget, tokenizer.EosTokenIds)).ToList();
                Assert.Equal(answer, tokenizer.Decode(produced, skipSpecialTokens: true));
            }
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    private const string TutorialEpochs = "60"; // the loss is below 0.01 after ~60 epochs (300 steps) on this fixture
}
