using System.Globalization;
using System.Text.Json.Nodes;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Kernels;
using FineTune.Engine.Models;
using FineTune.Engine.Training;
using static TorchSharp.torch;

namespace FineTune.Bench;

/// <summary>
/// `graph-check FIXTURES_DIR [--steps 6] [--out F]`: training with the micro-batches replayed from CUDA graphs
/// (MicroBatchGraphs) against the same job run op by op (graphs suspended), on the GPU: per fixture (qwen2, llama3) and
/// path (bf16 LoRA; NF4 QLoRA with checkpointing), the same rows (all of one length, so every micro-batch has one shape
/// and is replayed after the first capture), seed and settings with LoRA dropout 0.1 on every projection. A graph replays
/// the kernels the op-by-op run launches, on the same memory layout, so the step losses and the saved adapters must be
/// equal bit for bit; the check also demands that graphs ran (captures and replays) and that other dropout seeds change
/// the losses (the masks come from the device seed the graph reads). Exit code 1 when any check fails.
/// </summary>
internal static class GraphCheckCommand
{
    public static int Run(string[] args, BackendInfo backend)
    {
        string fixtures = args.Length > 0 ? args[0] : throw new ArgumentException("graph-check FIXTURES_DIR");
        var o = new Options(args[1..]);
        int steps = o.Int("steps", 6);
        Console.WriteLine($"CUDA graphs: {CudaGraphs.Status}");
        var checks = new JsonArray();
        bool allPass = CudaGraphs.Enabled;
        foreach (string family in new[] { "qwen2", "llama3" })
            foreach (bool fourBit in new[] { false, true })
            {
                string folder = Path.Combine(fixtures, family);
                var eager = Train(folder, backend.Device, fourBit, steps, graphs: false, seed: 7);
                var graphed = Train(folder, backend.Device, fourBit, steps, graphs: true, seed: 7);
                var otherSeed = Train(folder, backend.Device, fourBit, steps, graphs: true, seed: 8);
                bool sameLosses = eager.Losses.SequenceEqual(graphed.Losses);
                double adapterDiff = MaxDiff(eager.Adapter, graphed.Adapter);
                bool pass = sameLosses && adapterDiff == 0 && graphed.Replays > 0 && !eager.Losses.SequenceEqual(otherSeed.Losses);
                allPass &= pass;
                var detail = new JsonObject
                {
                    ["case"] = $"{family} {(fourBit ? "nf4 qlora, checkpointing" : "bf16 lora")}",
                    ["pass"] = pass,
                    ["losses_equal"] = sameLosses,
                    ["adapter_max_abs_diff"] = adapterDiff,
                    ["graph_log"] = graphed.GraphLog,
                    ["eager_losses"] = string.Join(" ", eager.Losses.Select(l => l.ToString("R", CultureInfo.InvariantCulture))),
                    ["graph_losses"] = string.Join(" ", graphed.Losses.Select(l => l.ToString("R", CultureInfo.InvariantCulture))),
                    ["other_seed_losses"] = string.Join(" ", otherSeed.Losses.Select(l => l.ToString("R", CultureInfo.InvariantCulture))),
                    ["eager_s"] = eager.Seconds,
                    ["graph_s"] = graphed.Seconds,
                };
                checks.Add(detail);
                Console.WriteLine($"{detail["case"],-40} {(pass ? "PASS" : "FAIL")} {detail.ToJsonString()}");
            }
        var result = new JsonObject { ["gpu"] = backend.Description, ["cuda_graphs"] = CudaGraphs.Status, ["checks"] = checks, ["all_pass"] = allPass };
        if (o.Optional("out") is string path) File.WriteAllText(path, result.ToJsonString());
        return allPass ? 0 : 1;
    }

    private static double MaxDiff(Dictionary<string, float[]> a, Dictionary<string, float[]> b) =>
        a.Keys.Order().SequenceEqual(b.Keys.Order())
            ? a.Max(kv => kv.Value.Zip(b[kv.Key], (x, y) => (double)MathF.Abs(x - y)).DefaultIfEmpty(0).Max())
            : double.PositiveInfinity;

    private sealed record Run_(double[] Losses, Dictionary<string, float[]> Adapter, int Replays, string GraphLog, double Seconds);

    private static Run_ Train(string modelFolder, Device device, bool fourBit, int steps, bool graphs, int seed)
    {
        string folder = Path.Combine(Path.GetTempPath(), "graph-check-" + Guid.NewGuid().ToString("N"));
        var log = new GraphLog();
        bool wasSuspended = CudaGraphs.Suspended;
        CudaGraphs.Suspended = !graphs;
        try
        {
            var job = new FineTuneJob
            {
                ModelFolder = modelFolder,
                Examples = Rows(modelFolder, 8 * steps, seed),
                ValidationFraction = 0,
                Lora = new LoraSettings(Rank: 8, Alpha: 16, Dropout: 0.1,
                    TargetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
                Training = new TrainingOptions { Epochs = 1, BatchSize = 4, GradientAccumulationSteps = 2, LearningRate = 1e-3, WarmupSteps = 1, Seed = seed },
                ComputeDType = ScalarType.BFloat16,
                FourBit = fourBit,
                Device = device,
                OutputFolder = Path.Combine(folder, "adapter"),
            };
            var started = System.Diagnostics.Stopwatch.StartNew();
            var outcome = new FineTunePipeline(log).Run(job);
            double seconds = started.Elapsed.TotalSeconds;
            var tensors = SafeTensors.LoadAll(Path.Combine(folder, "adapter", PeftAdapter.WeightsFile));
            var adapter = tensors.ToDictionary(kv => kv.Key, kv => kv.Value.to(ScalarType.Float32).cpu().data<float>().ToArray());
            foreach (var t in tensors.Values) t.Dispose();
            return new Run_([.. outcome.Training.History.Select(h => h.Loss)], adapter, log.Replays, log.Line ?? "", seconds);
        }
        finally
        {
            CudaGraphs.Suspended = wasSuspended;
            if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>Rows of one length (8 prompt + 24 answer tokens), ids of the model's vocabulary.</summary>
    private static List<TrainingExample> Rows(string modelFolder, int rows, int seed)
    {
        int vocab = JsonNode.Parse(File.ReadAllText(Path.Combine(modelFolder, "config.json")))!["vocab_size"]!.GetValue<int>();
        var random = new Random(3);
        return [.. Enumerable.Range(0, rows).Select(r =>
        {
            int[] ids = [.. Enumerable.Range(0, 32).Select(_ => random.Next(1, vocab))];
            int[] targets = new int[ids.Length];
            for (int t = 0; t < ids.Length; t++) targets[t] = t + 1 < ids.Length && t + 1 >= 8 ? ids[t + 1] : TrainingExamples.IgnoreIndex;
            return new TrainingExample(ids, targets, r + 1);
        })];
    }
}
