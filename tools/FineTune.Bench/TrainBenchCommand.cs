using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Training;

namespace FineTune.Bench;

/// <summary>
/// `train --model DIR --workload qa|dense [--data qa.jsonl] [--max-rows N] [--qa-batch R] [--dense-steps S --dense-batch B] [--qlora] [--gradient-checkpointing auto|on|off] [--layout packed|grouped] [--targets q_proj,k_proj,...] [--long-micro-batches on|off] [--long-micro-batch-percentile P] [--loss-chunk N] [--gpus N] [--step-phases] [--validation F [--evaluations N]] [--estimate] [--out result.json] [--output ADAPTER_DIR]`:
/// FineTune's trainer on the same model folder and data as tools/bench/reference.py (HF transformers + PEFT),
/// with the same LoRA (r 16, alpha 32, dropout 0.05, q/k/v/o), AdamW lr 2e-4, linear schedule, bf16.
/// Q&A: 8 rows per optimizer step, one epoch, answer-only loss. Dense: 4 × 512 tokens per step. --gpus N: data parallel
/// on the first N GPUs, the same global batch (each GPU trains its share of every step). --qa-batch R: R rows per Q&A
/// step instead of 8 (R = 4 is what each of two replicas trains). --step-phases: every replica's device-synchronized
/// phase times (forward, backward, all-reduce, optimizer) and the run's garbage collections, in "phases" (slower steps).
/// --targets: LoRA's target modules instead of the tutorial's q/k/v/o (FineTune only: reference.py keeps q/k/v/o), e.g. all
/// seven projections to measure what the MLP's adapters keep. --long-micro-batches off: every micro-batch keeps all its
/// activations (TrainingOptions.CheckpointLongMicroBatches; on by default); --long-micro-batch-percentile P: the budget at
/// that percentile of the run's micro-batch tokens instead of LongMicroBatches.DefaultPercentile (0.8). --loss-chunk N: the rows of lm_head and the
/// loss at a time (TrainingOptions.LossChunkSize, default 256), whose logits are held at the end of forward, beside
/// every layer's activations. --validation F: F of the rows held out and evaluated about --evaluations (10) times, as the wizard does. --estimate: the
/// settings page's measured time estimate of the same job first, in "estimate" with the run's time beside it.
/// </summary>
public static class TrainBenchCommand
{
    public static int Run(string[] args, BackendInfo backend)
    {
        var o = new Options(args);
        string modelFolder = o.Required("model");
        string workload = o.Required("workload");
        bool qlora = o.Flag("qlora");
        bool? checkpointing = (o.Optional("gradient-checkpointing") ?? "auto") switch
        {
            "auto" => null,
            "on" => true,
            "off" => false,
            var other => throw new ArgumentException($"--gradient-checkpointing {other}: use auto, on or off."),
        };
        var layout = (o.Optional("layout") ?? "packed") switch
        {
            "packed" => BatchLayout.Packed,
            "grouped" => BatchLayout.LengthGrouped,
            var other => throw new ArgumentException($"--layout {other}: use packed or grouped."),
        };

        // --accumulation N: N micro-batches an optimizer step (dense: --dense-steps stays the optimizer steps); --epochs N.
        int accumulation = o.Int("accumulation", 1), epochs = o.Int("epochs", 1);
        var (examples, batch) = workload switch
        {
            "qa" => (QaExamples(o.Required("data"), o.Int("max-rows", int.MaxValue)), o.Int("qa-batch", 8)),
            "dense" => (DenseExamples(o.Int("dense-steps", 60) * o.Int("dense-batch", 4) * accumulation), o.Int("dense-batch", 4)),
            _ => throw new ArgumentException($"--workload {workload}: use qa or dense."),
        };
        long realTokens = examples.Sum(e => (long)e.Length) * epochs;

        int gpus = o.Int("gpus", 1);
        if (gpus > 1 && backend.Gpus.Count < gpus) throw new ArgumentException($"--gpus {gpus}: this machine has {backend.Gpus.Count} GPU(s).");
        var job = Job(modelFolder, examples, batch, qlora, layout, checkpointing, backend) with
        {
            OutputFolder = o.Optional("output"),
            Devices = gpus > 1 ? [.. backend.GpuDevices.Take(gpus)] : null,
            TimeStepPhases = o.Flag("step-phases"),
        };
        bool longMicroBatches = (o.Optional("long-micro-batches") ?? "on") switch
        {
            "on" => true,
            "off" => false,
            var other => throw new ArgumentException($"--long-micro-batches {other}: use on or off."),
        };
        double percentile = o.Optional("long-micro-batch-percentile") is string given
            ? double.Parse(given, System.Globalization.CultureInfo.InvariantCulture) : LongMicroBatches.DefaultPercentile;
        job = job with { Training = job.Training with { GradientAccumulationSteps = accumulation, Epochs = epochs, CheckpointLongMicroBatches = longMicroBatches, LongMicroBatchPercentile = percentile, LossChunkSize = o.Int("loss-chunk", TrainingOptions.DefaultLossChunkSize) } };
        if (o.Optional("targets") is string targets)
            job = job with { Lora = job.Lora with { TargetModules = targets.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) } };
        if (o.Optional("validation") is string validation)
        {
            // The wizard's evaluation: a share of the rows held out, evaluated about --evaluations times a run.
            job = job with { ValidationFraction = double.Parse(validation, System.Globalization.CultureInfo.InvariantCulture) };
            int trainRows = examples.Count - Batching.ValidationCount(examples.Count, job.ValidationFraction);
            int total = job.Training.TotalSteps(trainRows);
            job = job with { Training = job.Training with { EvalSteps = Math.Max(1, (int)Math.Ceiling(total / (double)o.Int("evaluations", 10))) } };
        }
        // --estimate: the settings page's measured estimate of this very job first (FineTunePipeline.EstimateTime), then the run.
        var estimate = o.Flag("estimate") ? new FineTunePipeline().EstimateTime(job) : null;
        int[] collectionsBefore = [GC.CollectionCount(0), GC.CollectionCount(1), GC.CollectionCount(2)];
        var pauseBefore = GC.GetTotalPauseDuration();
        var graphLog = new GraphLog();
        var steps = new StepTimes();
        var outcome = new FineTunePipeline(graphLog).Run(job, steps);
        var gc = new JsonObject
        {
            ["gen0"] = GC.CollectionCount(0) - collectionsBefore[0],
            ["gen1"] = GC.CollectionCount(1) - collectionsBefore[1],
            ["gen2"] = GC.CollectionCount(2) - collectionsBefore[2],
            ["pause_ms"] = (GC.GetTotalPauseDuration() - pauseBefore).TotalMilliseconds,
        };
        var result = outcome.Training;
        double loadSeconds = outcome.LoadTime.TotalSeconds;
        double wall = outcome.TrainTime.TotalSeconds;

        var losses = result.History.Select(h => new JsonObject { ["step"] = h.Step, ["loss"] = h.Loss }).ToArray();
        var summary = new JsonObject
        {
            ["stack"] = "finetune",
            ["workload"] = workload,
            ["mode"] = qlora ? "qlora-nf4" : "lora-16bit",
            ["batch"] = batch,
            ["accumulation"] = accumulation,
            ["epochs"] = epochs,
            ["gpus"] = outcome.DeviceCount,
            ["layout"] = layout.ToString(),
            ["lora_targets"] = string.Join(",", job.Lora.Targets),
            ["long_micro_batches"] = longMicroBatches,
            ["long_micro_batch_percentile"] = percentile,
            ["loss_chunk"] = job.Training.LossChunkSize,
            ["gradient_checkpointing"] = outcome.GradientCheckpointing,
            ["model"] = Path.GetFileName(modelFolder.TrimEnd('/')),
            ["rows"] = examples.Count,
            ["optimizer_steps"] = result.History.Count,
            ["load_s"] = loadSeconds,
            ["wall_s"] = wall,
            ["real_tokens"] = realTokens,
            ["tokens_per_s"] = realTokens / wall,
            ["final_loss"] = result.History[^1].Loss,
            ["mean_loss_last_10"] = result.History.TakeLast(10).Average(h => h.Loss),
            ["gpu"] = backend.Description,
            ["gc_load_and_train"] = gc,
            // The second half of the run alone: the rate once the first steps (JIT, cuBLAS heuristics, graph captures) are behind.
            ["second_half_tokens_per_s"] = steps.SecondHalfTokensPerSecond,
            ["first_step_s"] = steps.FirstStepSeconds,
            ["cuda_graphs"] = $"{FineTune.Engine.Kernels.CudaGraphs.Status}; {graphLog.Line ?? "no graph line"}",
            ["flash_attention"] = FineTune.Engine.Kernels.FlashAttention.Status,
        };
        if (estimate is not null)
            summary["estimate"] = new JsonObject
            {
                ["total_s"] = estimate.Projection.Total.TotalSeconds,
                ["load_s"] = estimate.Projection.Load.TotalSeconds,
                ["train_s"] = estimate.Projection.Training.TotalSeconds,
                ["eval_s"] = estimate.Projection.Evaluation.TotalSeconds,
                ["timed_steps"] = new JsonArray([.. estimate.Measurement.TrainSteps.Select(t => (JsonNode)new JsonArray(t.Tokens, t.Time.TotalSeconds))]),
                ["timed_eval_batches"] = new JsonArray([.. estimate.Measurement.EvaluationBatches.Select(t => (JsonNode)new JsonArray(t.Tokens, t.Time.TotalSeconds))]),
                ["steps"] = estimate.Workload.Steps,
                ["evaluations"] = estimate.Workload.Evaluations,
                ["eval_batches"] = estimate.Workload.EvaluationBatchTokens.Count,
                ["run_s"] = loadSeconds + wall,
                ["ratio"] = estimate.Projection.Total.TotalSeconds / (loadSeconds + wall),
            };
        if (outcome.PhaseTimes is { } phases)
            summary["phases"] = new JsonArray([.. phases.Select(p => (JsonNode)new JsonObject
            {
                ["rank"] = p.Rank,
                ["steps"] = p.Steps,
                ["ms_per_step"] = new JsonObject(p.MillisecondsPerStep.Select(kv => KeyValuePair.Create(kv.Key, (JsonNode?)kv.Value))),
                ["gc_gen0_1_2"] = new JsonArray(p.Gen0Collections, p.Gen1Collections, p.Gen2Collections),
                ["gc_pause_ms"] = p.GcPauseMs,
            })]);
        Console.WriteLine(summary.ToJsonString());
        if (o.Optional("out") is string outPath)
        {
            summary["losses"] = new JsonArray(losses);
            File.WriteAllText(outPath, summary.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        }
        return 0;
    }

    /// <summary>
    /// The job tools/bench/reference.py runs with HF: LoRA r 16, alpha 32, dropout 0.05 on q/k/v/o; one epoch of AdamW at
    /// lr 2e-4 on a linear schedule, no warmup, no validation split, seed 0; the backend's device and dtype.
    /// </summary>
    public static FineTuneJob Job(string modelFolder, IReadOnlyList<TrainingExample> examples, int batch, bool qlora, BatchLayout layout,
        bool? gradientCheckpointing, BackendInfo backend) => new()
    {
        ModelFolder = modelFolder,
        Examples = examples,
        ValidationFraction = 0,
        Lora = new LoraSettings(Rank: 16, Alpha: 32, Dropout: 0.05),
        Training = new TrainingOptions
        {
            Epochs = 1,
            BatchSize = batch,
            GradientAccumulationSteps = 1,
            LearningRate = 2e-4,
            Schedule = LearningRateScheduleKind.Linear,
            Layout = layout,
            LoggingSteps = 1,
            Seed = 0,
            GradientCheckpointing = gradientCheckpointing,
        },
        FourBit = qlora,
        ComputeDType = backend.ComputeDType,
        Device = backend.Device,
    };

    /// <summary>Rows of tools/bench/reference.py make-data: {"prompt": [ids], "answer": [ids ending with EOS]}.</summary>
    public static List<TrainingExample> QaExamples(string path, int maxRows)
    {
        var examples = new List<TrainingExample>();
        int row = 0;
        foreach (string line in File.ReadLines(path).Take(maxRows))
        {
            row++;
            var json = JsonNode.Parse(line)!;
            int[] prompt = json["prompt"]!.AsArray().Select(v => v!.GetValue<int>()).ToArray();
            int[] answer = json["answer"]!.AsArray().Select(v => v!.GetValue<int>()).ToArray();
            int[] ids = [.. prompt, .. answer];
            // Targets[t] = label[t + 1]: the answer tokens (and EOS) are predicted, the prompt is not.
            int[] targets = new int[ids.Length];
            for (int t = 0; t < ids.Length; t++)
                targets[t] = t + 1 < ids.Length && t + 1 >= prompt.Length ? ids[t + 1] : TrainingExamples.IgnoreIndex;
            examples.Add(new TrainingExample(ids, targets, row));
        }
        return examples;
    }

    /// <summary>Continuous text: rows of 512 random ids, loss on every next token.</summary>
    internal static List<TrainingExample> DenseExamples(int rows)
    {
        var random = new Random(1);
        return Enumerable.Range(0, rows).Select(r =>
        {
            int[] ids = Enumerable.Range(0, 512).Select(_ => random.Next(100000, 150000)).ToArray();
            int[] targets = ids.Skip(1).Append(TrainingExamples.IgnoreIndex).ToArray();
            return new TrainingExample(ids, targets, r + 1);
        }).ToList();
    }
}

/// <summary>Each logged step's elapsed time and tokens seen, recorded as the trainer reports them (on its thread).</summary>
internal sealed class StepTimes : IProgress<TrainingProgress>
{
    private readonly List<(int Step, double Seconds, double Tokens)> _steps = [];

    public void Report(TrainingProgress value)
    {
        if (value.TokensPerSecond is double rate) // logged steps carry the rate; checkpoint-only reports do not
            lock (_steps) _steps.Add((value.Step, value.Elapsed.TotalSeconds, rate * value.Elapsed.TotalSeconds));
    }

    public double? FirstStepSeconds => _steps.Count > 0 ? _steps[0].Seconds : null;

    public double? SecondHalfTokensPerSecond
    {
        get
        {
            if (_steps.Count < 4) return null;
            var (_, t0, n0) = _steps[_steps.Count / 2];
            var (_, t1, n1) = _steps[^1];
            return (n1 - n0) / (t1 - t0);
        }
    }
}

