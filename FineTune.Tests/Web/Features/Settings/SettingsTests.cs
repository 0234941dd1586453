using FineTune.Web.Features.Models;
using FineTune.Web.Features.Settings;

namespace FineTune.Tests.Web.Features.Settings;

public class SettingsTests
{
    private static TrainingContext Context(int rows, bool cuda = true, long? memory = 80_000_000_000, int tooLong = 0, bool bf16 = true) =>
        new(rows, tooLong, rows * 100, cuda, bf16, memory, 16);

    [Theory]
    // rows, batch, accumulation, epochs → total steps (HF Trainer: ceil(ceil(rows/batch)/accum) per epoch × epochs)
    [InlineData(5, 1, 4, 3, 6)]
    [InlineData(8, 1, 4, 3, 6)]
    [InlineData(9, 1, 4, 3, 9)]
    [InlineData(100, 2, 4, 1, 13)]
    [InlineData(3, 1, 8, 2, 2)]
    public void Steps_follow_the_Hugging_Face_Trainer(int rows, int batch, int accumulation, int epochs, int expected)
    {
        var s = new TrainingSettings { BatchSize = batch, GradientAccumulationSteps = accumulation, Epochs = epochs, EvalFraction = 0 };
        var plan = TrainingEstimator.Plan(rows, s);
        Assert.Equal(expected, plan.TotalSteps);
        Assert.Equal(rows, plan.TrainRows);
    }

    [Fact]
    public void Eval_rows_are_split_off_from_20_rows_on_as_the_engine_does_and_warmup_rounds_up()
    {
        var s = new TrainingSettings { EvalFraction = 0.1, WarmupRatio = 0.03 };
        Assert.Equal((0, 5), (TrainingEstimator.Plan(5, s).EvalRows, TrainingEstimator.Plan(5, s).TrainRows));
        Assert.Equal(0, TrainingEstimator.Plan(19, s).EvalRows);
        Assert.Equal(2, TrainingEstimator.Plan(20, s).EvalRows);
        Assert.Equal(2, TrainingEstimator.Plan(25, s).EvalRows);   // round(2.5) to even, as Math.Round in Batching.Split
        Assert.Equal(1, TrainingEstimator.Plan(20, new TrainingSettings { EvalFraction = 0.01 }).EvalRows);
        var plan = TrainingEstimator.Plan(100, s);
        Assert.Equal((10, 90), (plan.EvalRows, plan.TrainRows));
        Assert.Equal(69, plan.TotalSteps); // ceil(90/4)=23 × 3
        Assert.Equal(3, plan.WarmupSteps);  // ceil(69 × 0.03)
    }

    [Fact]
    public void The_tutorial_five_rows_get_warnings_with_fixes_that_work()
    {
        var s = new TrainingSettings();
        var shape = FineTune.Engine.Models.ModelFacts.Of(ModelCatalog.Find(s.Model)!.Config);
        var warnings = SettingsAdvisor.Check(s, shape, Context(5));
        var codes = warnings.Select(w => w.Code).ToArray();
        Assert.Contains(WarningCode.FewRows, codes);
        Assert.Contains(WarningCode.NoEvalRows, codes);
        Assert.Contains(WarningCode.LoggingAfterEnd, codes);
        Assert.Contains(WarningCode.NoCheckpointBeforeEnd, codes);
        Assert.DoesNotContain(WarningCode.DoesNotFit, codes);

        foreach (var w in warnings) w.Fix?.Invoke(s);
        var after = SettingsAdvisor.Check(s, shape, Context(5)).Select(w => w.Code).ToArray();
        Assert.Equal(new[] { WarningCode.FewRows }, after);
        Assert.Equal((1, 3, 0.0), (s.LoggingSteps, s.SaveSteps, s.EvalFraction));
    }

    [Fact]
    public void A_model_too_big_for_the_gpu_suggests_4_bit_then_a_shorter_length()
    {
        var s = new TrainingSettings { Model = "Qwen/Qwen2.5-7B-Instruct", Quantization = Quantization.None };
        var shape = FineTune.Engine.Models.ModelFacts.Of(ModelCatalog.Find(s.Model)!.Config);
        var t4 = Context(200, memory: 15_000_000_000, bf16: false);

        var first = Assert.Single(SettingsAdvisor.Check(s, shape, t4), w => w.Code == WarningCode.DoesNotFit);
        first.Fix!(s);
        Assert.Equal(Quantization.Nf4, s.Quantization);
        Assert.DoesNotContain(SettingsAdvisor.Check(s, shape, t4), w => w.Code == WarningCode.DoesNotFit);

        s.Precision = Precision.BFloat16;
        var bf16 = Assert.Single(SettingsAdvisor.Check(s, shape, t4), w => w.Code == WarningCode.BFloat16Unsupported);
        bf16.Fix!(s);
        Assert.Equal(Precision.Float16, s.Precision);
    }

    [Fact]
    public void Cpu_runs_of_big_models_and_high_learning_rates_are_flagged()
    {
        var s = new TrainingSettings { Model = "Qwen/Qwen2.5-7B-Instruct", LearningRate = 5e-3 };
        var warnings = SettingsAdvisor.Check(s, FineTune.Engine.Models.ModelFacts.Of(ModelCatalog.Find(s.Model)!.Config), Context(1000, cuda: false, memory: 1_000_000_000_000));
        Assert.Contains(warnings, w => w.Code == WarningCode.LongRunOnCpu);
        Assert.Contains(warnings, w => w.Code == WarningCode.HighLearningRate);
        Assert.Contains(SettingsAdvisor.Check(s, null, Context(1000)), w => w.Code == WarningCode.UnknownModelSize);
        Assert.Contains(SettingsAdvisor.Check(s, null, Context(1000, tooLong: 3)), w => w.Code == WarningCode.RowsTooLong);
    }

    [Fact]
    public void Presets_apply_and_are_recognised()
    {
        var s = new TrainingSettings();
        Assert.Equal(SettingsPreset.Balanced, SettingsPresets.Match(s));
        SettingsPresets.Apply(s, SettingsPreset.Quick);
        Assert.Equal((1, 8, 256), (s.Epochs, s.LoraR, s.MaxSeqLength));
        Assert.Equal(SettingsPreset.Quick, SettingsPresets.Match(s));
        s.Epochs = 2;
        Assert.Null(SettingsPresets.Match(s));
        SettingsPresets.Apply(s, SettingsPreset.Balanced);
        Assert.Equal(new TrainingSettings().ToJson(), s.ToJson());
    }

    [Fact]
    public void Settings_round_trip_through_json_with_the_tutorial_defaults()
    {
        var s = TrainingSettings.FromJson(new TrainingSettings().ToJson());
        Assert.Equal((16, 32, 0.05, 3, 1, 4, 2e-4, 512), (s.LoraR, s.LoraAlpha, s.LoraDropout, s.Epochs, s.BatchSize, s.GradientAccumulationSteps, s.LearningRate, s.MaxSeqLength));
        Assert.Equal(new[] { "q_proj", "k_proj", "v_proj", "o_proj" }, s.TargetModules);
        Assert.Equal((10, 50, 2, Quantization.Nf4, true), (s.LoggingSteps, s.SaveSteps, s.SaveTotalLimit, s.Quantization, s.DoubleQuantization));
        Assert.Contains("\"Quantization\": \"Nf4\"", new TrainingSettings().ToJson());
    }

    /// <summary>
    /// settings.json as runs and wizard drafts hold it (SQLite Runs.SettingsJson, the draft's SettingsJson, the run folder),
    /// written by this class before FourBit existed: it reads back and writes out byte for byte, so computed facts add no field.
    /// </summary>
    private const string StoredSettingsJson = """
        {
          "Source": "Local",
          "Model": "/data/models/qwen2",
          "LoraR": 8,
          "LoraAlpha": 16,
          "LoraDropout": 0.1,
          "TargetModules": [
            "q_proj",
            "v_proj"
          ],
          "Epochs": 1.5,
          "BatchSize": 2,
          "GradientAccumulationSteps": 8,
          "LearningRate": 0.0001,
          "WarmupRatio": 0.05,
          "WarmupSteps": 3,
          "Schedule": "Cosine",
          "Layout": "Packed",
          "GradientCheckpointing": true,
          "AnswerOnlyLoss": false,
          "MaxSeqLength": 1024,
          "LoggingSteps": 5,
          "SaveSteps": 20,
          "SaveTotalLimit": 3,
          "EvalFraction": 0.2,
          "PromptTemplate": "Custom",
          "CustomTemplate": "Q: {instruction}\nA: {output}",
          "Quantization": "None",
          "DoubleQuantization": false,
          "Precision": "Float16",
          "Gpus": "One",
          "Seed": 7
        }
        """;

    [Fact]
    public void Stored_settings_json_round_trips_unchanged()
    {
        var s = TrainingSettings.FromJson(StoredSettingsJson);
        Assert.Equal((ModelSource.Local, Quantization.None, "Q: {instruction}\nA: {output}"), (s.Source, s.Quantization, s.CustomTemplate));
        Assert.Equal(StoredSettingsJson, s.ToJson());
        Assert.Equal(StoredSettingsJson, s.Clone().ToJson());
    }

    [Theory]
    [InlineData(Quantization.Nf4, true)]
    [InlineData(Quantization.None, false)]
    public void Four_bit_is_nf4_quantization_for_the_job_the_chat_and_the_estimates(Quantization quantization, bool fourBit)
    {
        var s = new TrainingSettings { Quantization = quantization };
        var shape = FineTune.Engine.Models.ModelFacts.Of(ModelCatalog.Find(s.Model)!.Config);

        Assert.Equal(fourBit, s.FourBit);
        Assert.Equal(fourBit, s.ToFineTuneJob("/models/qwen2", [], "/runs/1/adapter", "/runs/1/checkpoints").FourBit);
        Assert.Equal(fourBit, FineTune.Web.Features.Chat.ChatRequest.ForRun(s, null, FineTune.Web.Features.Chat.ChatRequest.Question("hi")).FourBit);
        Assert.Equal(TrainingEstimator.Memory(shape, s, fourBit), TrainingEstimator.Memory(shape, s));
        var sixteenBitTime = TrainingEstimator.Time(shape, 1_000_000, new TrainingSettings { Quantization = Quantization.None }, cuda: true, cpuThreads: 1);
        Assert.Equal(fourBit ? 1.5 : 1.0, TrainingEstimator.Time(shape, 1_000_000, s, cuda: true, cpuThreads: 1) / sixteenBitTime, precision: 6);
        Assert.DoesNotContain("FourBit", s.ToJson());
    }

    [Fact]
    public void The_rough_time_on_several_gpus_counts_each_as_one_more_gpus_speed()
    {
        var s = new TrainingSettings { Quantization = Quantization.None };
        var shape = ModelCatalog.FactsOf(s)!;
        var one = TrainingEstimator.Time(shape, 10_000_000, s, cuda: true, cpuThreads: 1);
        Assert.Equal(one, TrainingEstimator.Time(shape, 10_000_000, s, cuda: true, cpuThreads: 1, gpus: 1));
        Assert.Equal(0.5, TrainingEstimator.Time(shape, 10_000_000, s, cuda: true, cpuThreads: 1, gpus: 2) / one, precision: 6);
        Assert.Throws<ArgumentOutOfRangeException>(() => TrainingEstimator.Time(shape, 10_000_000, s, cuda: true, cpuThreads: 1, gpus: 0));
    }

    [Fact]
    public void Token_estimate_counts_chinese_characters_about_one_each()
    {
        var row = new FineTune.Engine.Data.QaRow("可以退貨嗎？", "可以。");
        Assert.Equal(9 + 16, TrainingEstimator.EstimateTokens(row));
        Assert.Equal(16 + 3, TrainingEstimator.EstimateTokens(new("hello world", "")));
    }
}
