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
/// the kernels the op-by-op run launches, so the step losses and the saved adapters may differ from the op-by-op run's by
/// no more than two op-by-op runs differ from each other (bit for bit where those agree: attention's backward adds with
/// atomics); the check also demands that graphs ran and that another seed changes the losses by far more (the dropout
/// masks come from the device seed the graph reads). Exit code 1 when any check fails.
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
        // Every fixture and path with dropout and accumulation on; then qwen2 in bf16 without each, which tells a difference apart.
        // With two GPUs or more, the first two cases again data-parallel on two (each replica captures its own graph).
        IReadOnlyList<Device>? two = backend.GpuDevices.Count >= 2 ? [.. backend.GpuDevices.Take(2)] : null;
        bool unitOnly = o.Flag("unit-only");
        List<GraphCase> cases = unitOnly ? [] : new()
        {
            new("qwen2", FourBit: false), new("qwen2", FourBit: true), new("llama3", FourBit: false), new("llama3", FourBit: true),
            new("qwen2", FourBit: false, Dropout: 0), new("qwen2", FourBit: false, Accumulation: 1), new("qwen2", FourBit: false, Dropout: 0, Accumulation: 1),
            new("qwen2", FourBit: false, Lengths: RowLengths.Few), new("qwen2", FourBit: true, Lengths: RowLengths.Few),
            // Rows of 8-119 tokens: with checkpointing (and on two GPUs) packed micro-batches are padded to bucket lengths.
            new("qwen2", FourBit: true, Lengths: RowLengths.Wide), new("llama3", FourBit: true, Lengths: RowLengths.Wide),
            // The same in bf16: the longest micro-batches checkpoint part of their layers (LongMicroBatches), inside their graphs.
            new("qwen2", FourBit: false, Lengths: RowLengths.Wide),
        };
        if (!unitOnly && two is not null)
            cases.InsertRange(7, [new("qwen2", FourBit: false, Devices: two), new("qwen2", FourBit: true, Devices: two), new("qwen2", FourBit: false, Devices: two, Lengths: RowLengths.Wide)]);
        foreach (var (family, fourBit, dropout, accumulation, devices, lengths) in cases)
        {
            string folder = Path.Combine(fixtures, family);
            var eager = Train(folder, backend.Device, fourBit, steps, graphs: false, seed: 7, dropout, accumulation, devices, lengths);
            var eagerAgain = Train(folder, backend.Device, fourBit, steps, graphs: false, seed: 7, dropout, accumulation, devices, lengths);
            var graphed = Train(folder, backend.Device, fourBit, steps, graphs: true, seed: 7, dropout, accumulation, devices, lengths);
            var otherSeed = Train(folder, backend.Device, fourBit, steps, graphs: true, seed: 8, dropout, accumulation, devices, lengths);
            bool sameLosses = eager.Losses.SequenceEqual(graphed.Losses);
            double adapterDiff = MaxDiff(eager.Adapter, graphed.Adapter);
            // Two op-by-op runs of one job can differ where a backward kernel adds with atomics (attention's dq): the
            // graph may differ from the op-by-op run by no more than the op-by-op run differs from itself, and not at all
            // where that is bit-exact.
            double eagerLossDiff = eager.Losses.Zip(eagerAgain.Losses, (a, b) => Math.Abs(a - b)).Max();
            double graphLossDiff = eager.Losses.Zip(graphed.Losses, (a, b) => Math.Abs(a - b)).Max();
            double otherSeedLossDiff = eager.Losses.Zip(otherSeed.Losses, (a, b) => Math.Abs(a - b)).Max();
            double eagerAdapterDiff = MaxDiff(eager.Adapter, eagerAgain.Adapter);
            bool pass = graphed.Replays > 0 && graphLossDiff <= 2 * eagerLossDiff && adapterDiff <= 2 * eagerAdapterDiff
                && otherSeedLossDiff > 10 * Math.Max(graphLossDiff, 1e-6);
            allPass &= pass;
            var detail = new JsonObject
            {
                ["case"] = $"{family} {(fourBit ? "nf4 qlora, checkpointing" : "bf16 lora")}, dropout {dropout}, accumulation {accumulation}{(devices is null ? "" : $", {devices.Count} GPUs")}{lengths switch { RowLengths.Few => ", rows of many lengths", RowLengths.Wide => ", rows of 8-119 tokens", _ => "" }}",
                ["pass"] = pass,
                ["losses_equal"] = sameLosses,
                ["adapter_max_abs_diff"] = adapterDiff,
                ["eager_vs_eager_adapter_max_abs_diff"] = eagerAdapterDiff,
                ["graph_vs_eager_max_loss_diff"] = graphLossDiff,
                ["eager_vs_eager_max_loss_diff"] = eagerLossDiff,
                ["other_seed_max_loss_diff"] = otherSeedLossDiff,
                ["graph_log"] = graphed.GraphLog,
                ["eager_losses"] = string.Join(" ", eager.Losses.Select(l => l.ToString("R", CultureInfo.InvariantCulture))),
                ["graph_losses"] = string.Join(" ", graphed.Losses.Select(l => l.ToString("R", CultureInfo.InvariantCulture))),
                ["other_seed_losses"] = string.Join(" ", otherSeed.Losses.Select(l => l.ToString("R", CultureInfo.InvariantCulture))),
                ["eager_grad_norms"] = string.Join(" ", eager.GradNorms.Select(l => l.ToString("R", CultureInfo.InvariantCulture))),
                ["graph_grad_norms"] = string.Join(" ", graphed.GradNorms.Select(l => l.ToString("R", CultureInfo.InvariantCulture))),
                ["eager_s"] = eager.Seconds,
                ["graph_s"] = graphed.Seconds,
            };
            checks.Add(detail);
            Console.WriteLine($"{detail["case"],-62} {(pass ? "PASS" : "FAIL")} {detail.ToJsonString()}");
        }
        // One fused function between a leaf and a matmul, its input gradient replayed from a graph against op by op.
        var device = backend.Device;
        var seed = tensor(new[] { 1234L }, device: device);
        var weight = ones(256, ScalarType.BFloat16, device);
        // LoRA A weights (r = 256 here, so the unit's matmul takes the output) that require gradients, as the working copies do.
        // Each pass takes a new leaf of the same values: with one leaf first used op by op, the capture's backward failed at
        // its gradient accumulator (cudaErrorStreamCaptureImplicit: the legacy stream made to wait on the capture; H200,
        // 2026-11-30). The trainer's training cases above capture the same function without this.
        var loraA = (randn(256, 256, device: device) * 0.05).to(ScalarType.BFloat16).requires_grad_(true);
        var otherA = (randn(256, 256, device: device) * 0.05).to(ScalarType.BFloat16).requires_grad_(true);
        var thirdA = (randn(256, 256, device: device) * 0.05).to(ScalarType.BFloat16).requires_grad_(true);
        // q, k and v's draws, as LoraLinear.ForwardShared takes them: one seed, own keys.
        FusedOps.DropoutDraw[] qkv = [new(0.1, seed, 5), new(0.1, seed, 6), new(0.1, seed, 7)];
        // RoPE's tables for the unit's 64 rows as 64 positions of 2 heads of 128: (1, 1, 64, 128).
        var rope = new RotaryEmbedding(128, new RopeSettings(1000000.0), device);
        var (ropeCos, ropeSin) = rope.Compute(arange(64, ScalarType.Int64, device).unsqueeze(0), ScalarType.BFloat16);
        var (headCos, signedSin) = AttentionOps.RotaryTables(ropeCos, ropeSin);
        foreach (var (name, op) in new (string, Func<Tensor, Tensor>)[]
        {
            ("unit: fused dropout", x => FusedOps.Dropout(x, 0.1, seed, 3)!),
            ("unit: fused dropout twice on one input", x => FusedOps.Dropout(x, 0.1, seed, 3)! + FusedOps.Dropout(x, 0.1, seed, 4)!),
            ("unit: fused dropout of a computed input, key 0", x => FusedOps.Dropout(x * 1, 0.1, seed, 0)!),
            ("unit: fused dropout + LoRA A", x => FusedOps.DropoutLinear(x, Fresh(loraA), 0.1, seed, 5)),
            ("unit: fused dropout + LoRA A, two of one input", x => FusedOps.DropoutLinear(x, Fresh(loraA), 0.1, seed, 5) + FusedOps.DropoutLinear(x, Fresh(otherA), 0.1, seed, 6)),
            ("unit: fused dropout + LoRA A of q/k/v, one function", x => FusedOps.DropoutLinearShared(x, [Fresh(loraA), Fresh(otherA), Fresh(thirdA)], qkv).Aggregate((s, t) => s + t)),
            ("unit: fused dropout + LoRA A of q/k/v, k's output unused", x =>
            {
                var downs = FusedOps.DropoutLinearShared(x, [Fresh(loraA), Fresh(otherA), Fresh(thirdA)], qkv);
                return downs[0] + downs[2];                                                 // k's gets no gradient: null in backward
            }),
            ("unit: fused silu mul with down's dropout + LoRA A, one function", x =>
            {
                var (h, down) = FusedOps.SiluMulDropoutLinear(x, x * 2, Fresh(loraA), 0.1, seed, 8);
                return h + down;                                                            // r = 256: the product's width
            }),
            ("unit: fused rms norm", x => FusedOps.RmsNorm(x, weight, 1e-6)),
            ("unit: fused silu mul", x => FusedOps.SiluMul(x, x * 2)),
            // (64, 256) as q of 2 heads, a transposed view (1, 2, 64, 128) as the attention layers pass it, and back.
            ("unit: fused rotary", x => FusedOps.Rotary(x.view(1, 64, 2, 128).transpose(1, 2), headCos, signedSin).transpose(1, 2).reshape(64, 256)),
        })
        {
            var (graphGrad, eagerGrad) = UnitGradients(device, op);
            double diff = (graphGrad.to(ScalarType.Float32) - eagerGrad.to(ScalarType.Float32)).abs().max().item<float>();
            bool pass = diff == 0 && eagerGrad.to(ScalarType.Float32).abs().max().item<float>() > 0;
            allPass &= pass;
            checks.Add(new JsonObject { ["case"] = name, ["pass"] = pass, ["max_abs_diff"] = diff });
            Console.WriteLine($"{name,-62} {(pass ? "PASS" : "FAIL")} max|diff| {diff}");
        }
        var result = new JsonObject { ["gpu"] = backend.Description, ["cuda_graphs"] = CudaGraphs.Status, ["checks"] = checks, ["all_pass"] = allPass };
        if (o.Optional("out") is string path) File.WriteAllText(path, result.ToJsonString());
        return allPass ? 0 : 1;
    }

    private static Tensor Fresh(Tensor leaf) => leaf.detach().clone().requires_grad_(true);

    /// <summary>d/dx of sum(linear(op(x), W) · probe) from a replayed graph and op by op.</summary>
    private static (Tensor Graph, Tensor Eager) UnitGradients(Device device, Func<Tensor, Tensor> op)
    {
        using var generator = new TorchSharp.torch.Generator(3);
        var x0 = randn([64, 256], generator: generator).to(ScalarType.BFloat16).to(device);
        var w = (randn([32, 256], generator: generator) * 0.1).to(ScalarType.BFloat16).to(device);
        var probe = randn([64, 32], generator: generator).to(device);
        void Work(Tensor x) => (nn.functional.linear(op(x), w).to(ScalarType.Float32) * probe).sum().backward();
        var eager = x0.clone().requires_grad_(true);
        Work(eager);
        var captured = x0.clone().requires_grad_(true);
        var graph = new CudaGraphs.CudaGraph();
        if (!graph.Capture(CudaKernels.Ordinal(device)!.Value, () => Work(captured), out var failure)) throw new InvalidOperationException(failure);
        graph.Replay();
        cuda.synchronize(device);
        return (captured.grad!.clone(), eager.grad!.clone());
    }

    private static double MaxDiff(Dictionary<string, float[]> a, Dictionary<string, float[]> b) =>
        a.Keys.Order().SequenceEqual(b.Keys.Order())
            ? a.Max(kv => kv.Value.Zip(b[kv.Key], (x, y) => (double)MathF.Abs(x - y)).DefaultIfEmpty(0).Max())
            : double.PositiveInfinity;

    /// <summary>One training comparison: a fixture, the path, and the settings the variants change.</summary>
    private sealed record GraphCase(string Family, bool FourBit, double Dropout = 0.1, int Accumulation = 2, IReadOnlyList<Device>? Devices = null, RowLengths Lengths = RowLengths.One);

    /// <summary>The rows' lengths: all 32 tokens; 10 or 11 (packed micro-batches of a few shapes); 8 to 119 (many shapes: padded to buckets where the plan says so).</summary>
    private enum RowLengths { One, Few, Wide }

    private sealed record TrainedRun(double[] Losses, double[] GradNorms, Dictionary<string, float[]> Adapter, int Replays, string GraphLog, double Seconds);

    private static TrainedRun Train(string modelFolder, Device device, bool fourBit, int steps, bool graphs, int seed, double dropout, int accumulation, IReadOnlyList<Device>? devices, RowLengths lengths = RowLengths.One)
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
                Examples = Rows(modelFolder, (lengths == RowLengths.One ? 8 : 64) * steps, seed, lengths),
                ValidationFraction = 0,
                Lora = new LoraSettings(Rank: 8, Alpha: 16, Dropout: dropout,
                    TargetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]),
                Training = new TrainingOptions { Epochs = 1, BatchSize = 4, GradientAccumulationSteps = accumulation, LearningRate = 1e-3, WarmupSteps = 1, Seed = seed },
                ComputeDType = ScalarType.BFloat16,
                FourBit = fourBit,
                Device = device,
                Devices = devices,
                OutputFolder = Path.Combine(folder, "adapter"),
            };
            var started = System.Diagnostics.Stopwatch.StartNew();
            var outcome = new FineTunePipeline(log).Run(job);
            double seconds = started.Elapsed.TotalSeconds;
            var tensors = SafeTensors.LoadAll(Path.Combine(folder, "adapter", PeftAdapter.WeightsFile));
            var adapter = tensors.ToDictionary(kv => kv.Key, kv => kv.Value.to(ScalarType.Float32).cpu().data<float>().ToArray());
            foreach (var t in tensors.Values) t.Dispose();
            return new TrainedRun([.. outcome.Training.History.Select(h => h.Loss)], [.. outcome.Training.History.Select(h => h.GradNorm)], adapter, log.Replays, log.Line ?? "", seconds);
        }
        finally
        {
            CudaGraphs.Suspended = wasSuspended;
            if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>Rows of one length (8 prompt + 24 answer tokens), of 10 or 11 tokens (packed batches of a few shapes, so
    /// several graphs share the pool), or of 8 to 119; ids of the model's vocabulary.</summary>
    private static List<TrainingExample> Rows(string modelFolder, int rows, int seed, RowLengths lengths)
    {
        int vocab = JsonNode.Parse(File.ReadAllText(Path.Combine(modelFolder, "config.json")))!["vocab_size"]!.GetValue<int>();
        var random = new Random(3);
        return [.. Enumerable.Range(0, rows).Select(r =>
        {
            int length = lengths switch { RowLengths.Few => random.Next(10, 12), RowLengths.Wide => random.Next(8, 120), _ => 32 };
            int[] ids = [.. Enumerable.Range(0, length).Select(_ => random.Next(1, vocab))];
            int[] targets = new int[ids.Length];
            for (int t = 0; t < ids.Length; t++) targets[t] = t + 1 < ids.Length && t + 1 >= 8 ? ids[t + 1] : TrainingExamples.IgnoreIndex;
            return new TrainingExample(ids, targets, r + 1);
        })];
    }
}
