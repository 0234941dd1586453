using System.Diagnostics;
using System.Text.Json.Nodes;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Kernels;
using FineTune.Engine.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Bench;

/// <summary>
/// `kernels [--out F]`: every kernel of Kernels/finetune_kernels.cu against its torch fallback on the GPU, in fp32,
/// bf16 and fp16 (fresh random inputs, the output poisoned first), then each timed against the fallback at 7B sizes.
/// The same comparisons as FineTune.Tests/Kernels/FusedOpsTests.cs, for the GPU machine, which has no .NET SDK.
/// </summary>
internal static class KernelsCommand
{
    public static int Run(string[] args, BackendInfo backend)
    {
        var o = new Options(args);
        var result = new JsonObject { ["gpu"] = backend.Description, ["kernels"] = backend.Kernels };
        Console.WriteLine($"kernels: {backend.Kernels}");
        if (!CudaKernels.On(backend.Device))
        {
            Console.WriteLine(result.ToJsonString());
            return 1;
        }
        var device = backend.Device;
        var checks = new JsonArray();
        bool allPass = true;
        using var _ = no_grad();
        foreach (var dtype in new[] { ScalarType.BFloat16, ScalarType.Float16, ScalarType.Float32 })
        {
            foreach (var (name, bound, run) in Cases(device, dtype))
            {
                using var scope = NewDisposeScope();
                var (kernel, fallback) = run();
                var k = kernel.to(ScalarType.Float64);
                var f = fallback.to(ScalarType.Float64);
                bool sameShape = kernel.shape.SequenceEqual(fallback.shape);
                double maxAbs = sameShape ? (k - f).abs().max().item<double>() : double.NaN;
                double scale = f.abs().max().item<double>();
                bool equal = sameShape && kernel.eq(fallback).all().item<bool>();
                // Bounds: "exact" bit-equal; else max |kernel - fallback| <= bound x (largest |fallback|).
                bool pass = bound == 0 ? equal : sameShape && maxAbs <= bound * scale && !double.IsNaN(maxAbs);
                allPass &= pass;
                string line = $"{name,-22} {dtype,-9} equal={equal,-5} max|diff|={maxAbs:G3} scale={scale:G3} bound={(bound == 0 ? "exact" : bound.ToString("G3"))} {(pass ? "PASS" : "FAIL")}";
                Console.WriteLine(line);
                checks.Add(new JsonObject { ["case"] = name, ["dtype"] = dtype.ToString(), ["equal"] = equal, ["max_abs_diff"] = maxAbs, ["scale"] = scale, ["bound"] = bound, ["pass"] = pass });
            }
        }
        // Every other GPU in its own context, from this thread (GPU 0's context current) and from a fresh one, as a
        // data-parallel replica's thread.
        for (int ordinal = 1; ordinal < cuda.device_count(); ordinal++)
        {
            var gpu = new Device(DeviceType.CUDA, ordinal);
            foreach (bool freshThread in new[] { false, true })
            {
                bool pass = false;
                string detail = "";
                void Check()
                {
                    using var scope = NewDisposeScope();
                    if (!CudaKernels.On(gpu)) { detail = CudaKernels.FailureOn(ordinal) ?? "off"; return; }
                    var gate = (randn(5, 18944, device: gpu) * 4).to(ScalarType.BFloat16);
                    var up = randn(5, 18944, device: gpu).to(ScalarType.BFloat16);
                    var (kernel, fallback) = Both(() => FusedOps.SiluMul(gate, up));
                    var data = Nf4.Quantize(randn(512, 896, device: gpu) * 0.05);
                    var (w, wFallback) = Both(() => Nf4.Dequantize(data, ScalarType.BFloat16));
                    pass = kernel.device_index == ordinal && kernel.eq(fallback).all().item<bool>() && w.eq(wFallback).all().item<bool>();
                }
                if (freshThread)
                {
                    var thread = new Thread(() => { try { Check(); } catch (Exception e) { detail = e.Message; } });
                    thread.Start();
                    thread.Join();
                }
                else Check();
                allPass &= pass;
                string name = $"GPU {ordinal}{(freshThread ? ", fresh thread" : "")}: silu mul + nf4 dequant";
                Console.WriteLine($"{name,-50} {(pass ? "PASS" : $"FAIL {detail}")}");
                checks.Add(new JsonObject { ["case"] = name, ["dtype"] = "BFloat16", ["equal"] = pass, ["pass"] = pass, ["detail"] = detail });
            }
        }
        result["checks"] = checks;
        result["all_pass"] = allPass;
        result["timings_ms"] = Timings(device);
        Console.WriteLine(result.ToJsonString());
        if (o.Optional("out") is string path) File.WriteAllText(path, result.ToJsonString());
        return allPass ? 0 : 1;
    }

    /// <summary>Runs <paramref name="op"/> with the kernels on and then off (the fallback).</summary>
    private static (Tensor Kernel, Tensor Fallback) Both(Func<Tensor> op)
    {
        var kernel = op();
        CudaKernels.Suspended = true;
        try { return (kernel, op()); }
        finally { CudaKernels.Suspended = false; }
    }

    private static IEnumerable<(string Name, double Bound, Func<(Tensor, Tensor)> Run)> Cases(Device device, ScalarType dtype)
    {
        foreach (var (rows, cols) in new[] { (512, 896), (333, 77) })
            foreach (bool dq in new[] { true, false })
                yield return ($"nf4 dequant {rows}x{cols}{(dq ? " dq" : "")}", 0, () =>
                {
                    var w = randn(rows, cols, device: device) * 0.05;
                    var data = Nf4.Quantize(w, dq);
                    return Both(() => Nf4.Dequantize(data, dtype));
                });
        foreach (bool dq in new[] { true, false })
            yield return ($"nf4 matvec 1000x3584{(dq ? " dq" : "")}", dtype == ScalarType.Float32 ? 1e-5 : 1e-2, () =>
            {
                var data = Nf4.Quantize(randn(1000, 3584, device: device) * 0.05, dq);
                var x = randn(1, 1, 3584, device: device).to(dtype);
                var kernel = FusedOps.Nf4MatVec(x, data) ?? throw new InvalidOperationException("the matvec kernel did not run");
                using var w = Nf4.DequantizeWithTorch(data, dtype);
                return (kernel, nn.functional.linear(x, w));
            });
        yield return ("rms norm 3x7x3584", dtype == ScalarType.Float32 ? 1e-6 : 1e-2, () =>
        {
            var x = randn(3, 7, 3584, device: device).to(dtype) * 3;
            var weight = (randn(3584, device: device) * 0.1 + 1).to(dtype);
            return Both(() => FusedOps.RmsNorm(x, weight, 1e-6));
        });
        foreach (var (rows, cols) in new[] { (5, 18944), (3, 333) }) // 16 a thread, and one a thread
            yield return ($"silu mul {rows}x{cols}", 0, () =>
            {
                var gate = (randn(rows, cols, device: device) * 4).to(dtype);
                var up = randn(rows, cols, device: device).to(dtype);
                return Both(() => FusedOps.SiluMul(gate, up));
            });
        yield return ("rotary 2x28x37x128", 0, () =>
        {
            // q as the attention layers make it: a transposed view of the projection's output.
            var q = randn(2, 37, 28, 128, device: device).to(dtype).transpose(1, 2); // (B, nH, T, hD)
            var rope = new RotaryEmbedding(128, new RopeSettings(1000000.0), device);
            var positions = arange(0, 37, device: device).unsqueeze(0).expand(2, 37);
            var (cos, sin) = rope.Compute(positions, dtype);
            var (c, s) = AttentionOps.RotaryTables(cos, sin);
            return Both(() => FusedOps.Rotary(q, c, s));
        });
        foreach (var decodeCase in DecodeKernelCases.Cases(device, dtype)) yield return decodeCase;
        foreach (var trainingCase in TrainingKernelCases.Cases(device, dtype)) yield return trainingCase;
    }

    /// <summary>Median milliseconds of kernel and fallback at the 7B MLP's sizes, synced around each of 20 runs.</summary>
    private static JsonObject Timings(Device device)
    {
        var timings = new JsonObject();
        var dtype = ScalarType.BFloat16;
        using var scope = NewDisposeScope();
        var data = Nf4.Quantize(randn(18944, 3584, device: device) * 0.05);
        var x1 = randn(1, 1, 3584, device: device).to(dtype);
        var h = randn(512, 3584, device: device).to(dtype);
        var weight = ones(3584, dtype: dtype, device: device);
        var gate = randn(512, 18944, device: device).to(dtype);
        var up = randn(512, 18944, device: device).to(dtype);
        var q = randn(1, 512, 28, 128, device: device).to(dtype).transpose(1, 2);
        var rope = new RotaryEmbedding(128, new RopeSettings(1000000.0), device);
        var (cos, sin) = rope.Compute(arange(0, 512, device: device).unsqueeze(0), dtype);
        var (c, s) = AttentionOps.RotaryTables(cos, sin);
        void Pair(string name, Func<Tensor> kernel, Func<Tensor> fallback)
        {
            double k = Median(kernel), f = Median(fallback);
            timings[name] = new JsonObject { ["kernel"] = k, ["fallback"] = f };
            Console.WriteLine($"{name,-40} kernel {k,8:F3} ms   fallback {f,8:F3} ms   {f / k,6:F1}x");
        }
        Pair("nf4 dequant 18944x3584 -> bf16", () => Nf4.Dequantize(data, dtype), () => Nf4.DequantizeWithTorch(data, dtype));
        Pair("nf4 matvec 1x3584 -> 18944", () => FusedOps.Nf4MatVec(x1, data)!, () => { using var w = Nf4.DequantizeWithTorch(data, dtype); return nn.functional.linear(x1, w); });
        Pair("nf4 dequant+linear 1x3584 (kernel dequant)", () => { using var w = Nf4.Dequantize(data, dtype); return nn.functional.linear(x1, w); }, () => { using var w = Nf4.DequantizeWithTorch(data, dtype); return nn.functional.linear(x1, w); });
        Pair("rms norm 512x3584", () => FusedOps.RmsNorm(h, weight, 1e-6), () => FusedOps.RmsNormWithTorch(h, weight, 1e-6));
        Pair("silu mul 512x18944", () => FusedOps.SiluMul(gate, up), () => { CudaKernels.Suspended = true; try { return FusedOps.SiluMul(gate, up); } finally { CudaKernels.Suspended = false; } });
        Pair("rms norm fwd+bwd 512x3584 (fused vs torch graph)", () => TrainStep(() => FusedOps.RmsNorm(h.requires_grad_(true), weight, 1e-6), h), () => Plain(() => TrainStep(() => FusedOps.RmsNorm(h.requires_grad_(true), weight, 1e-6), h)));
        Pair("silu mul fwd+bwd 512x18944 (fused vs torch graph)", () => TrainStep(() => FusedOps.SiluMul(gate.requires_grad_(true), up.requires_grad_(true)), gate, up), () => Plain(() => TrainStep(() => FusedOps.SiluMul(gate.requires_grad_(true), up.requires_grad_(true)), gate, up)));
        Pair("rotary 1x28x512x128", () => FusedOps.Rotary(q, c, s), () => { CudaKernels.Suspended = true; try { return FusedOps.Rotary(q, c, s); } finally { CudaKernels.Suspended = false; } });
        var qRows = randn(1, 512, 28, 128, device: device).to(dtype);                     // the leaf q is a transposed view of
        Pair("rotary fwd+bwd 1x28x512x128 (fused vs torch graph)", () => TrainStep(() => FusedOps.Rotary(qRows.requires_grad_(true).transpose(1, 2), c, s), qRows), () => Plain(() => TrainStep(() => FusedOps.Rotary(qRows.requires_grad_(true).transpose(1, 2), c, s), qRows)));
        return timings;
    }

    /// <summary>Forward and backward of <paramref name="op"/> on leaves; returns the first leaf's gradient (the leaves' are cleared).</summary>
    private static Tensor TrainStep(Func<Tensor> op, params Tensor[] leaves)
    {
        using var _ = enable_grad();
        using var y = op();
        y.backward([ones_like(y)]);
        var grad = leaves[0].grad!.detach().clone();
        foreach (var leaf in leaves) { leaf.grad?.Dispose(); leaf.grad = null; leaf.requires_grad_(false); }
        return grad;
    }

    private static Tensor Plain(Func<Tensor> op)
    {
        FusedOps.PlainAutograd = true;
        try { return op(); }
        finally { FusedOps.PlainAutograd = false; }
    }

    private static double Median(Func<Tensor> op)
    {
        for (int i = 0; i < 3; i++) op().Dispose();
        cuda.synchronize();
        var times = new List<double>();
        for (int i = 0; i < 20; i++)
        {
            var clock = Stopwatch.StartNew();
            op().Dispose();
            cuda.synchronize();
            times.Add(clock.Elapsed.TotalMilliseconds);
        }
        times.Sort();
        return times[times.Count / 2];
    }
}
