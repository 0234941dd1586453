using System.Diagnostics;
using System.Text.Json.Nodes;
using FineTune.Engine.Backend;
using FineTune.Engine.Training;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FineTune.Bench;

/// <summary>
/// `optim [--layers 24] [--steps 100] [--rank 16] [--hidden 896] [--kv 128]`: the optimizer part of a LoRA step (zero
/// grads, clip to norm 1, AdamW) over the adapters of a Qwen2.5-0.5B-shaped model (q/k/v/o per layer: A (r, hidden);
/// B (hidden | kv, r)),
/// TorchSharp's AdamW + clip_grad_norm_ + zero_grad against FlatAdamW. Prints ms per step for each.
/// </summary>
internal static class OptimizerBenchCommand
{
    public static int Run(string[] args, BackendInfo backend)
    {
        var o = new Options(args);
        int layers = o.Int("layers", 24), steps = o.Int("steps", 100), rank = o.Int("rank", 16), hidden = o.Int("hidden", 896), kv = o.Int("kv", 128);
        long[][] layerShapes = [[rank, hidden], [hidden, rank], [rank, hidden], [kv, rank], [rank, hidden], [kv, rank], [rank, hidden], [hidden, rank]];
        var shapes = Enumerable.Range(0, layers).SelectMany(_ => layerShapes).ToList();

        List<Parameter> MakeParameters()
        {
            var list = new List<Parameter>();
            foreach (var shape in shapes)
            {
                var p = new Parameter(randn(shape, device: backend.Device) * 0.02);
                using (no_grad()) p.grad = randn(shape, device: backend.Device);
                list.Add(p);
            }
            return list;
        }

        double Time(Action step)
        {
            for (int i = 0; i < 5; i++) step(); // warm-up: state allocation, caches
            if (backend.IsCuda) cuda.synchronize();
            var clock = Stopwatch.StartNew();
            for (int i = 0; i < steps; i++) step();
            if (backend.IsCuda) cuda.synchronize();
            return clock.Elapsed.TotalMilliseconds / steps;
        }

        var torchParameters = MakeParameters();
        double torchMs;
        using (var adamW = optim.AdamW(torchParameters, 2e-4))
        {
            torchMs = Time(() =>
            {
                using var scope = NewDisposeScope();
                double norm = nn.utils.clip_grad_norm_(torchParameters, 1.0); // reads the norm on the host, as the old trainer did
                if (double.IsFinite(norm)) adamW.step();
                adamW.zero_grad();
            });
        }

        var flatParameters = MakeParameters();
        double flatMs;
        using (var flat = new FlatAdamW(flatParameters, 2e-4))
        {
            flatMs = Time(() =>
            {
                using var scope = NewDisposeScope();
                double norm = flat.ClipGradNorm(1.0).item<float>(); // the trainer's one read per step
                if (double.IsFinite(norm)) flat.Step();
                flat.ZeroGrad();
            });
        }

        Console.WriteLine(new JsonObject
        {
            ["parameters"] = shapes.Count,
            ["values"] = shapes.Sum(s => s[0] * s[1]),
            ["steps"] = steps,
            ["torchsharp_adamw_ms_per_step"] = torchMs,
            ["flat_adamw_ms_per_step"] = flatMs,
            ["speedup"] = torchMs / flatMs,
            ["device"] = backend.Description,
        }.ToJsonString());
        foreach (var p in torchParameters.Concat(flatParameters)) p.Dispose();
        return 0;
    }
}
