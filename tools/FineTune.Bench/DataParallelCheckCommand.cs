using System.Globalization;
using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Models;
using FineTune.Engine.Training;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Bench;

/// <summary>
/// `dp-check --model DIR [--devices N] [--dtype bf16|fp32] [--rows 96] [--out result.json] [--keep DIR]`: the same job
/// (fixture, rows, seed, settings) trained on the first device alone and data-parallel on the first N devices; compares
/// the loss and gradient-norm curves, the validation losses and the saved adapters. Dropout is 0 so both runs draw no
/// random numbers and must agree up to the arithmetic's rounding (the micro-batches each device computes differ in
/// shape, so bf16 kernels round differently). Exit code 1 when a difference is past the tolerance.
/// </summary>
public static class DataParallelCheckCommand
{
    public static int Run(string[] args, BackendInfo backend)
    {
        var o = new Options(args);
        int count = o.Int("devices", 2);
        var devices = backend.IsCuda ? backend.GpuDevices.Take(count).ToList() : [.. Enumerable.Repeat(CPU, count)];
        if (devices.Count < count) throw new ArgumentException($"--devices {count}: this machine has {devices.Count} GPU(s).");
        var dtype = (o.Optional("dtype") ?? (backend.IsCuda ? "bf16" : "fp32")) switch
        {
            "bf16" => ScalarType.BFloat16,
            "fp32" => ScalarType.Float32,
            var other => throw new ArgumentException($"--dtype {other}: use bf16 or fp32."),
        };
        string folder = o.Optional("keep") ?? Path.Combine(Path.GetTempPath(), "dp-check-" + Guid.NewGuid().ToString("N"));
        try
        {
            var comparison = Compare(o.Required("model"), devices, dtype, o.Int("rows", 96), folder);
            var json = comparison.ToJson();
            json["gpu"] = backend.Description;
            Console.WriteLine(json.ToJsonString());
            if (o.Optional("out") is string outPath)
                File.WriteAllText(outPath, json.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
            return comparison.WithinTolerance ? 0 : 1;
        }
        finally
        {
            if (o.Optional("keep") is null && Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>
    /// The job both runs share: <paramref name="rows"/> synthetic Q&amp;A rows (ids of the model's vocabulary, prompts of
    /// 4–24 tokens and answers of 4–40), 10% validation, batch 4 × accumulation 2, two epochs, linear schedule with
    /// warmup, LoRA r 8 on q/k/v/o without dropout, a checkpoint every 3 steps.
    /// </summary>
    public static FineTuneJob Job(string modelFolder, int rows, ScalarType dtype, string checkpoints) => new()
    {
        ModelFolder = modelFolder,
        Examples = SyntheticRows(modelFolder, rows),
        ValidationFraction = 0.1,
        Lora = new LoraSettings(Rank: 8, Alpha: 16, Dropout: 0),
        Training = new TrainingOptions
        {
            Epochs = 2,
            BatchSize = 4,
            GradientAccumulationSteps = 2,
            LearningRate = 1e-3,
            WarmupSteps = 2,
            EvalSteps = 4,
            SaveSteps = 3,
            SaveTotalLimit = 0,
            Seed = 7,
        },
        ComputeDType = dtype,
        CheckpointsFolder = checkpoints,
    };

    public static DataParallelComparison Compare(string modelFolder, IReadOnlyList<Device> devices, ScalarType dtype, int rows, string folder)
    {
        var pipeline = new FineTunePipeline();
        string single = Path.Combine(folder, "single"), parallel = Path.Combine(folder, "parallel");
        var one = pipeline.Run(Job(modelFolder, rows, dtype, Path.Combine(single, "checkpoints")) with { Device = devices[0], OutputFolder = Path.Combine(single, "adapter") });
        var many = pipeline.Run(Job(modelFolder, rows, dtype, Path.Combine(parallel, "checkpoints")) with { Device = devices[0], Devices = devices, OutputFolder = Path.Combine(parallel, "adapter") });

        var a = one.Training.History;
        var b = many.Training.History;
        if (a.Count != b.Count) throw new InvalidOperationException($"The single-device run took {a.Count} steps, the data-parallel one {b.Count}.");
        double lossDiff = a.Zip(b).Max(p => Math.Abs(p.First.Loss - p.Second.Loss));
        double gradNormRelDiff = a.Zip(b).Max(p => Math.Abs(p.First.GradNorm - p.Second.GradNorm) / Math.Max(1e-12, Math.Abs(p.First.GradNorm)));
        double lrDiff = a.Zip(b).Max(p => Math.Abs(p.First.LearningRate - p.Second.LearningRate));
        var evalA = a.Where(h => h.EvalLoss is not null).Select(h => (h.Step, h.EvalLoss!.Value)).ToList();
        var evalB = b.Where(h => h.EvalLoss is not null).Select(h => (h.Step, h.EvalLoss!.Value)).ToList();
        if (!evalA.Select(e => e.Step).SequenceEqual(evalB.Select(e => e.Step))) throw new InvalidOperationException("The runs evaluated at different steps.");
        double evalDiff = evalA.Zip(evalB).Select(p => Math.Abs(p.First.Item2 - p.Second.Item2)).DefaultIfEmpty(0).Max();

        var (maxAbs, relA, relB) = AdapterDifference(Path.Combine(single, "adapter"), Path.Combine(parallel, "adapter"));
        var checkpointsA = Directory.GetDirectories(Path.Combine(single, "checkpoints")).Select(Path.GetFileName).Order().ToList();
        var checkpointsB = Directory.GetDirectories(Path.Combine(parallel, "checkpoints")).Select(Path.GetFileName).Order().ToList();
        bool fp32 = dtype == ScalarType.Float32;
        return new DataParallelComparison(devices.Count, dtype.ToString(), a.Count, [.. a.Select(h => h.Loss)], [.. b.Select(h => h.Loss)],
            lossDiff, gradNormRelDiff, lrDiff, evalDiff, maxAbs, relA, relB, checkpointsA.SequenceEqual(checkpointsB), [.. checkpointsB!],
            LossTolerance: fp32 ? 1e-4 : 2e-2, AdapterRelTolerance: fp32 ? 1e-3 : 5e-2,
            one.TrainTime.TotalSeconds, many.TrainTime.TotalSeconds);
    }

    /// <summary>The largest absolute difference over all adapter tensors, and ‖a − b‖ / ‖a‖ over the lora_A and over the lora_B tensors.</summary>
    private static (double MaxAbs, double RelA, double RelB) AdapterDifference(string folderA, string folderB)
    {
        var a = SafeTensors.LoadAll(Path.Combine(folderA, PeftAdapter.WeightsFile));
        var b = SafeTensors.LoadAll(Path.Combine(folderB, PeftAdapter.WeightsFile));
        try
        {
            if (!a.Keys.Order().SequenceEqual(b.Keys.Order())) throw new InvalidOperationException("The two adapters hold different tensors.");
            double maxAbs = 0, diffA = 0, normA = 0, diffB = 0, normB = 0;
            foreach (var (name, x) in a)
            {
                using var scope = NewDisposeScope();
                var xf = x.to(ScalarType.Float64);
                var yf = b[name].to(ScalarType.Float64);
                maxAbs = Math.Max(maxAbs, (xf - yf).abs().max().item<double>());
                double d = (xf - yf).pow(2).sum().item<double>(), n = xf.pow(2).sum().item<double>();
                if (name.Contains("lora_A", StringComparison.Ordinal)) { diffA += d; normA += n; }
                else { diffB += d; normB += n; }
            }
            return (maxAbs, Math.Sqrt(diffA / Math.Max(1e-300, normA)), Math.Sqrt(diffB / Math.Max(1e-300, normB)));
        }
        finally
        {
            foreach (var t in a.Values.Concat(b.Values)) t.Dispose();
        }
    }

    private static List<TrainingExample> SyntheticRows(string modelFolder, int rows)
    {
        int vocab = JsonNode.Parse(File.ReadAllText(Path.Combine(modelFolder, "config.json")))!["vocab_size"]!.GetValue<int>();
        var random = new Random(3);
        return [.. Enumerable.Range(0, rows).Select(r =>
        {
            int prompt = random.Next(4, 25), answer = random.Next(4, 41);
            int[] ids = [.. Enumerable.Range(0, prompt + answer).Select(_ => random.Next(1, vocab))];
            int[] targets = new int[ids.Length];
            for (int t = 0; t < ids.Length; t++)
                targets[t] = t + 1 < ids.Length && t + 1 >= prompt ? ids[t + 1] : TrainingExamples.IgnoreIndex;
            return new TrainingExample(ids, targets, r + 1);
        })];
    }
}

/// <summary>How a data-parallel run compared with the single-device run of the same job.</summary>
public sealed record DataParallelComparison(
    int Devices, string DType, int Steps, double[] SingleLosses, double[] ParallelLosses,
    double MaxLossDiff, double MaxGradNormRelDiff, double MaxLearningRateDiff, double MaxEvalLossDiff,
    double AdapterMaxAbsDiff, double AdapterRelDiffA, double AdapterRelDiffB, bool SameCheckpoints, string[] Checkpoints,
    double LossTolerance, double AdapterRelTolerance, double SingleTrainSeconds, double ParallelTrainSeconds)
{
    public bool WithinTolerance =>
        MaxLossDiff <= LossTolerance && MaxEvalLossDiff <= LossTolerance && MaxLearningRateDiff == 0 && SameCheckpoints
        && AdapterRelDiffA <= AdapterRelTolerance && AdapterRelDiffB <= AdapterRelTolerance;

    public JsonObject ToJson() => new()
    {
        ["devices"] = Devices,
        ["dtype"] = DType,
        ["steps"] = Steps,
        ["max_loss_diff"] = MaxLossDiff,
        ["max_grad_norm_rel_diff"] = MaxGradNormRelDiff,
        ["max_lr_diff"] = MaxLearningRateDiff,
        ["max_eval_loss_diff"] = MaxEvalLossDiff,
        ["adapter_max_abs_diff"] = AdapterMaxAbsDiff,
        ["adapter_rel_diff_lora_A"] = AdapterRelDiffA,
        ["adapter_rel_diff_lora_B"] = AdapterRelDiffB,
        ["same_checkpoints"] = SameCheckpoints,
        ["checkpoints"] = string.Join(" ", Checkpoints),
        ["loss_tolerance"] = LossTolerance,
        ["adapter_rel_tolerance"] = AdapterRelTolerance,
        ["within_tolerance"] = WithinTolerance,
        ["single_train_s"] = SingleTrainSeconds,
        ["parallel_train_s"] = ParallelTrainSeconds,
        ["single_losses"] = string.Join(" ", SingleLosses.Select(l => l.ToString("G6", CultureInfo.InvariantCulture))),
        ["parallel_losses"] = string.Join(" ", ParallelLosses.Select(l => l.ToString("G6", CultureInfo.InvariantCulture))),
    };
}
