using System.Diagnostics;
using System.Text.Json.Nodes;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Training;
using static TorchSharp.torch;

namespace FineTune.Bench;

/// <summary>
/// `profile --model DIR (--workload qa|dense | --cells dense:4,qa:8,...) [--data qa.jsonl] [--steps 20] [--qlora]`: where a training step's time
/// goes, per workload and rows per step (cell). Runs the trainer's step (collate, forward, loss, backward, clip + AdamW) phase by phase, twice: as the
/// trainer does (host time per phase; the GPU runs behind) and with a device sync after each phase (device time per
/// phase). Host time close to the synced time means the step is bound by the host (launch and dispatch cost).
/// Also the host cost of one small op (`overhead`), to compare with PyTorch's from Python on the same machine.
/// </summary>
internal static class ProfileCommand
{
    private static readonly string[] Phases = ["collate", "forward", "loss", "backward", "optimizer"];

    public static int Run(string[] args, BackendInfo backend)
    {
        var o = new Options(args);
        string modelFolder = o.Required("model");
        int steps = o.Int("steps", 20);
        // --profiler-steps N: the last N host-timed steps of each cell run between cuProfilerStart and cuProfilerStop, for
        // Nsight Compute's --profile-from-start off (a kernel-by-kernel account of those steps alone).
        int profilerSteps = o.Int("profiler-steps", 0);
        bool qlora = o.Flag("qlora");
        // --cells dense:4,dense:2,qa:8,qa:4 profiles several workloads and rows per step after one model load (a replica of a
        // 2-GPU run trains half of each step: compare its rows alone with the whole step); default: --workload at its batch.
        var cells = (o.Optional("cells") ?? o.Required("workload")).Split(',').Select(cell =>
        {
            var parts = cell.Split(':');
            string workload = parts[0];
            int batch = parts.Length > 1 ? int.Parse(parts[1], System.Globalization.CultureInfo.InvariantCulture) : workload == "qa" ? 8 : 4;
            return (workload, batch);
        }).ToList();
        List<TrainingExample> Examples(string workload, int batch) => workload switch
        {
            "qa" => TrainBenchCommand.QaExamples(o.Required("data"), batch * (steps + 3) * 2),
            "dense" => TrainBenchCommand.DenseExamples(batch * (steps + 3) * 2),
            _ => throw new ArgumentException($"--workload {workload}: use qa or dense."),
        };
        // The benchmark's job (tools/bench/reference.py's settings), loaded by the pipeline that trains it.
        var first = Examples(cells[0].workload, cells[0].batch);
        var job = TrainBenchCommand.Job(modelFolder, first, cells[0].batch, qlora, BatchLayout.Packed, gradientCheckpointing: null, backend);
        var pipeline = new FineTunePipeline();
        using var loaded = pipeline.LoadModel(job);
        var model = loaded.Model;
        var trainable = loaded.Trainable;
        var parameters = model.parameters().Where(p => p.requires_grad).ToList();
        using var optimizer = new FlatAdamW(parameters, 2e-4);
        // As the trainer: the adapters' bf16 copies, refreshed after each optimizer step.
        using var workingCopies = AdapterWorkingCopies.For(optimizer, [.. trainable.NamedLinears().Select(l => l.Layer).Where(l => l.HasAdapter)]);
        var trainer = new LoraTrainer(trainable, job.Lora, modelFolder);
        // As the pipeline decides it for a run of the first cell (auto: off when the GPU holds the run without it).
        // (Before 2026-11-30 the profile left it off, so its QLoRA steps were the path without checkpointing.)
        var checkpointing = pipeline.ResolveCheckpointing(job, new DataSplit(first, []));
        trainable.GradientCheckpointing = checkpointing.On;
        model.train();
        // As the trainer: LoRA dropout's masks drawn by the kernels from a device seed per micro-batch (a training
        // micro-batch on a GPU), not torch's dropout. (Before 2026-12-01 the profile left the draws unset, so its steps took
        // torch's dropout and the masked copies linear's graph keeps, a path training no longer runs.)
        using var dropoutSeed = backend.IsCuda ? zeros(1, ScalarType.Int64, backend.Device) : null; // (1)
        IDisposable? Draws(int step) => dropoutSeed is null ? null : DropoutDraws.Begin(dropoutSeed, DropoutDraws.SeedFor(42, step, 0, 0));

        var results = new JsonArray();
        foreach (var (workload, batchSize) in cells)
        {
            var examples = Examples(workload, batchSize);
            var batches = Batching.MakeBatches(examples, [.. Enumerable.Range(0, examples.Count)], batchSize, BatchLayout.Packed);
            var result = new JsonObject { ["workload"] = workload, ["rows_per_step"] = batchSize, ["mode"] = qlora ? "qlora-nf4" : "lora-16bit", ["gpu"] = backend.Description, ["gradient_checkpointing"] = checkpointing.On };
            int next = 0;
            foreach (bool synced in new[] { false, true })
            {
                var totals = new double[Phases.Length];
                double wall = 0;
                long tokens = 0;
                for (int s = 0; s < steps + 3; s++)
                {
                    bool measured = s >= 3; // three warm-up steps (allocator, cuBLAS handles, autotuning)
                    bool profiled = !synced && backend.IsCuda && s >= steps + 3 - profilerSteps;
                    if (profiled) { cuda.synchronize(); CudaProfiler.cuProfilerStart(); }
                    var times = new double[Phases.Length];
                    var stepClock = Stopwatch.StartNew();
                    var clock = Stopwatch.StartNew();
                    void Mark(int phase)
                    {
                        if (synced && backend.IsCuda) cuda.synchronize();
                        times[phase] += clock.Elapsed.TotalMilliseconds;
                        clock.Restart();
                    }
                    using (var scope = NewDisposeScope())
                    {
                        optimizer.ZeroGrad();
                        var indices = batches[next++ % batches.Count];
                        using var batch = Batching.Collate(examples, indices, BatchLayout.Packed, backend.Device);
                        Mark(0);
                        Tensor loss;
                        using (Draws(s))
                        {
                            var hidden = trainable.HiddenStates(batch.InputIds, batch.PositionIds, batch.AttentionMask, batch.Packed);
                            Mark(1);
                            // As the trainer: the loss's gradient made in forward for the upstream gradient 1 / targets.
                            using var divisor = tensor((float)batch.TargetCount, device: backend.Device);
                            loss = trainer.LossSum(hidden, batch, job.Training.LossChunkSize, ones_like(divisor) / divisor) / divisor;
                            Mark(2);
                            loss.backward();
                        }
                        workingCopies?.AccumulateGradients();
                        Mark(3);
                        var norm = optimizer.ClipGradNorm(1.0);
                        var values = cat([loss.detach().to(ScalarType.Float64).reshape(1), norm.to(ScalarType.Float64).reshape(1)]).cpu().data<double>().ToArray();
                        optimizer.Step();
                        workingCopies?.Refresh();
                        if (backend.IsCuda) cuda.synchronize();
                        Mark(4);
                        if (measured) tokens += batch.TokenCount;
                    }
                    if (profiled) { cuda.synchronize(); CudaProfiler.cuProfilerStop(); }
                    if (qlora) { GC.Collect(); GC.WaitForPendingFinalizers(); }
                    if (measured)
                    {
                        wall += stepClock.Elapsed.TotalMilliseconds;
                        for (int i = 0; i < Phases.Length; i++) totals[i] += times[i];
                    }
                }
                var entry = new JsonObject { ["step_ms"] = wall / steps, ["tokens_per_step"] = (double)tokens / steps };
                for (int i = 0; i < Phases.Length; i++) entry[Phases[i] + "_ms"] = totals[i] / steps;
                result[synced ? "synced" : "host"] = entry;
            }
            if (results.Count == 0)
            {
                // No-grad forward and a forward with the adapters switched off: what autograd and the LoRA path add.
                using (no_grad())
                {
                    result["forward_nograd_ms"] = TimeForward(trainable, examples, batches, backend, steps);
                }
                // The training forward alone (gradients on: checkpointed layers' first pass, dropout seeded per draw).
                using (Draws(0)) result["forward_train_ms"] = TimeForward(trainable, examples, batches, backend, steps);
                foreach (var (_, layer) in trainable.NamedLinears()) layer.AdapterEnabled = false;
                using (Draws(0)) result["forward_no_lora_ms"] = TimeForward(trainable, examples, batches, backend, steps);
                foreach (var (_, layer) in trainable.NamedLinears()) layer.AdapterEnabled = true;
                result["small_op_us"] = SmallOpMicroseconds(backend);
                if (backend.IsCuda) result["host_call_us"] = HostCallMicroseconds(backend);
            }
            Console.WriteLine(result.ToJsonString());
            results.Add(result);
        }
        if (o.Optional("out") is string path) File.WriteAllText(path, (results.Count == 1 ? results[0]! : results).ToJsonString());
        return 0;
    }

    private static double TimeForward(CausalLmTraining model, List<TrainingExample> examples, List<int[]> batches, BackendInfo backend, int steps)
    {
        double total = 0;
        for (int s = 0; s < steps + 3; s++)
        {
            using var scope = NewDisposeScope();
            using var batch = Batching.Collate(examples, batches[s % batches.Count], BatchLayout.Packed, backend.Device);
            if (backend.IsCuda) cuda.synchronize();
            var clock = Stopwatch.StartNew();
            model.HiddenStates(batch.InputIds, batch.PositionIds, batch.AttentionMask, packed: batch.Packed);
            if (backend.IsCuda) cuda.synchronize();
            if (s >= 3) total += clock.Elapsed.TotalMilliseconds;
        }
        return total / steps;
    }

    /// <summary>
    /// `host-calls`: host microseconds of single calls, each timed once with the GPU idle and once right behind ~50 ms of queued
    /// matmuls: a call that waits for the GPU (an implicit synchronization) shows the queue's time in the second column.
    /// </summary>
    public static int HostCalls(BackendInfo backend)
    {
        if (!backend.IsCuda) return 1;
        var device = backend.Device;
        using var a = randn(8192, 8192, device: device).to(ScalarType.BFloat16);
        using var h = randn(512, 3584, device: device).to(ScalarType.BFloat16);
        using var w = randn(16, 3584, device: device).to(ScalarType.BFloat16);
        long seed = 1;
        var calls = new (string Name, Action Call)[]
        {
            ("mul", () => h.mul(h).Dispose()),
            ("cuda_manual_seed", () => cuda.manual_seed(seed++)),
            ("seed_device", () => DropoutTape.SeedDevice(device, seed++)),
            ("dropout", () => nn.functional.dropout(h, 0.05, training: true).Dispose()),
            ("bernoulli_", () => { using var m = empty_like(h).bernoulli_(0.95); }),
            ("randint_cpu_item", () => { using var t = randint(0, 1L << 62, [1], ScalarType.Int64); t.item<long>(); }),
            ("linear", () => nn.functional.linear(h, w).Dispose()),
            ("empty", () => empty(1 << 20, ScalarType.BFloat16, device).Dispose()),
        };
        var result = new JsonObject();
        foreach (var (name, call) in calls)
        {
            double idle = 0, busy = 0;
            for (int round = 0; round < 5; round++)
            {
                cuda.synchronize();
                var clock = Stopwatch.StartNew();
                call();
                double t = clock.Elapsed.TotalMilliseconds * 1000;
                for (int i = 0; i < 60; i++) a.matmul(a).Dispose();       // ~60 x 1.4 ms queued
                clock.Restart();
                call();
                double tb = clock.Elapsed.TotalMilliseconds * 1000;
                if (round > 0) { idle += t / 4; busy += tb / 4; }
            }
            cuda.synchronize();
            result[name] = new JsonArray(idle, busy);
        }
        Console.WriteLine(result.ToJsonString());
        return 0;
    }

    /// <summary>Host microseconds of the calls the LoRA dropout path makes per draw (seeding the device's generator) and per layer.</summary>
    private static JsonObject HostCallMicroseconds(BackendInfo backend)
    {
        const int n = 2000;
        var result = new JsonObject();
        void Time(string name, Action call)
        {
            call();
            cuda.synchronize();
            var clock = Stopwatch.StartNew();
            for (int i = 0; i < n; i++) call();
            result[name] = clock.Elapsed.TotalMilliseconds * 1000 / n;
            cuda.synchronize();
        }
        long seed = 1;
        Time("cuda_manual_seed", () => cuda.manual_seed(seed++));
        Time("current_device", () => FineTune.Engine.Distributed.CudaRuntime.CurrentDevice());
        Time("seed_device", () => DropoutTape.SeedDevice(backend.Device, seed++));
        Time("randint_item", () => { using var t = randint(0, 1L << 62, [1], ScalarType.Int64); t.item<long>(); });
        using var h = randn(512, 3584, device: backend.Device).to(ScalarType.BFloat16);
        Time("dropout_512x3584", () => nn.functional.dropout(h, 0.05, training: true).Dispose());
        Time("seed_and_dropout", () => { DropoutTape.SeedDevice(backend.Device, seed++); nn.functional.dropout(h, 0.05, training: true).Dispose(); });
        Time("bernoulli_mask", () => { using var m = empty_like(h).bernoulli_(0.95); });
        return result;
    }

    /// <summary>Host microseconds per small op: y = x * 2 + 1 on a 1024-element tensor, in a dispose scope, as model code does.</summary>
    private static JsonObject SmallOpMicroseconds(BackendInfo backend)
    {
        using var x = ones(1024, dtype: ScalarType.BFloat16, device: backend.Device);
        var result = new JsonObject();
        for (int round = 0; round < 2; round++)
        {
            if (backend.IsCuda) cuda.synchronize();
            var clock = Stopwatch.StartNew();
            const int n = 20000;
            for (int i = 0; i < n; i++)
            {
                using var scope = NewDisposeScope();
                var y = x * 2;
            }
            double perOp = clock.Elapsed.TotalMilliseconds * 1000 / n;
            clock.Restart();
            for (int i = 0; i < n; i++) x.mul_(1.0);
            double inPlace = clock.Elapsed.TotalMilliseconds * 1000 / n;
            if (backend.IsCuda) cuda.synchronize();
            result["mul_new_tensor_us"] = perOp;
            result["mul_in_place_us"] = inPlace;
        }
        return result;
    }
}

/// <summary>The CUDA driver's profiler range (what Nsight Compute's --profile-from-start off waits for).</summary>
internal static class CudaProfiler
{
    [System.Runtime.InteropServices.DllImport("libcuda.so.1")] internal static extern int cuProfilerStart();
    [System.Runtime.InteropServices.DllImport("libcuda.so.1")] internal static extern int cuProfilerStop();
}
