using System.Diagnostics;
using System.Text.Json.Nodes;
using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Kernels;
using FineTune.Engine.Models;
using static TorchSharp.torch;

namespace FineTune.Bench;

/// <summary>
/// `flash-check [--out F]`: causal attention through libtorch's flash kernels (FlashAttention, called by its C++ entry
/// point) against the SDPA path it replaces (kv heads repeated; packed rows with their block mask), on the GPU, at the
/// 7B shape's heads (28 query heads, 4 kv heads, head dim 128), bf16 and fp16: packed rows of several lengths (B = 1)
/// and whole rows (B = 2, plain causal). Both are compared with fp32 math on the same inputs, output and the gradients
/// of q, k and v: flash passes when its largest error is at most twice SDPA's plus one rounding step of the format at
/// the largest value (the two kernels round differently; neither is the reference). Also timed (forward + backward,
/// median of 20). Exit code 1 when a check fails.
/// </summary>
internal static class FlashCheckCommand
{
    public static int Run(string[] args, BackendInfo backend)
    {
        var o = new Options(args);
        Console.WriteLine($"flash attention: {FlashAttention.Status}");
        var checks = new JsonArray();
        bool allPass = backend.IsCuda && FlashAttention.Handles(backend.Device, ScalarType.BFloat16, 128);
        foreach (var dtype in new[] { ScalarType.BFloat16, ScalarType.Float16 })
        {
            foreach (var (name, lengths, rows) in new (string, int[], int)[]
            {
                ("packed 8 rows", [37, 200, 5, 91, 300, 64, 129, 18], 1),
                ("packed 2 rows", [512, 512], 1),
                ("whole rows 2 x 512", [512], 2),
            })
            {
                var check = Compare(backend.Device, dtype, lengths, rows);
                check["case"] = name;
                checks.Add(check);
                allPass &= (bool)check["pass"]!;
                Console.WriteLine(check.ToJsonString());
            }
        }
        var result = new JsonObject { ["gpu"] = backend.Description, ["flash_attention"] = FlashAttention.Status, ["checks"] = checks, ["all_pass"] = allPass };
        Console.WriteLine(result.ToJsonString());
        if (o.Optional("out") is { } path) File.WriteAllText(path, result.ToJsonString());
        Console.WriteLine(allPass ? "flash-check: PASS" : "flash-check: FAIL");
        return allPass ? 0 : 1;
    }

    private static JsonObject Compare(Device device, ScalarType dtype, int[] lengths, int rows)
    {
        const int heads = 28, kvHeads = 4, headDim = 128;
        using var scope = NewDisposeScope();
        int t = lengths.Sum();
        using var generator = new TorchSharp.torch.Generator(11);                 // drawn on the CPU, then moved
        var q = randn([rows, heads, t, headDim], generator: generator).to(device);
        var k = randn([rows, kvHeads, t, headDim], generator: generator).to(device);
        var v = randn([rows, kvHeads, t, headDim], generator: generator).to(device);
        var dy = randn([rows, t, heads * headDim], generator: generator).to(device);
        bool packedRow = rows == 1 && lengths.Length > 1;
        using var blockMask = packedRow ? Batching.BlockCausalMask(lengths, device) : null;
        using var packed = packedRow ? PackedSequences.Of(lengths, device) : null;

        (Tensor Y, Tensor Dq, Tensor Dk, Tensor Dv, double Ms) Run(ScalarType runType, bool flash)
        {
            bool was = FlashAttention.Suspended;
            FlashAttention.Suspended = !flash;
            try
            {
                using var builder = new AttentionMaskBuilder(t, 0, blockMask, runType, device, packed);
                var mask = builder.For(null);
                Tensor[] leaves = [.. new[] { q, k, v }.Select(x => x.to(runType).detach().requires_grad_(true))];
                var y = AttentionOps.Attend(leaves[0], leaves[1], leaves[2], mask);
                y.backward([dy.to(runType)]);
                var result = (y.detach().to(ScalarType.Float32), leaves[0].grad!.to(ScalarType.Float32), leaves[1].grad!.to(ScalarType.Float32), leaves[2].grad!.to(ScalarType.Float32));
                // Time and memory only for the 16-bit runs (the fp32 reference takes SDPA's math path).
                if (runType == ScalarType.Float32) return (result.Item1, result.Item2, result.Item3, result.Item4, 0);
                var times = new List<double>();
                for (int i = 0; i < 23; i++)
                {
                    foreach (var l in leaves) l.grad?.zero_();
                    cuda.synchronize(device);
                    var clock = Stopwatch.StartNew();
                    using (var s = NewDisposeScope())
                    {
                        var yy = AttentionOps.Attend(leaves[0], leaves[1], leaves[2], mask);
                        yy.backward([dy.to(runType)]);
                    }
                    cuda.synchronize(device);
                    if (i >= 3) times.Add(clock.Elapsed.TotalMilliseconds);
                }
                times.Sort();
                return (result.Item1, result.Item2, result.Item3, result.Item4, times[times.Count / 2]);
            }
            finally
            {
                FlashAttention.Suspended = was;
            }
        }

        var reference = Run(ScalarType.Float32, flash: false);
        var sdpa = Run(dtype, flash: false);
        var viaFlash = Run(dtype, flash: true);
        double step = dtype == ScalarType.BFloat16 ? 1.0 / 128 : 1.0 / 1024; // one rounding step at 1.0
        var check = new JsonObject { ["dtype"] = dtype.ToString(), ["rows"] = rows, ["lengths"] = string.Join(",", lengths) };
        bool pass = true;
        foreach (var (what, r, s, f) in new[]
        {
            ("output", reference.Y, sdpa.Y, viaFlash.Y), ("dq", reference.Dq, sdpa.Dq, viaFlash.Dq),
            ("dk", reference.Dk, sdpa.Dk, viaFlash.Dk), ("dv", reference.Dv, sdpa.Dv, viaFlash.Dv),
        })
        {
            double largest = r.abs().max().item<float>();
            double sdpaError = (s - r).abs().max().item<float>();
            double flashError = (f - r).abs().max().item<float>();
            bool ok = flashError <= 2 * sdpaError + step * largest && double.IsFinite(flashError);
            pass &= ok;
            check[what] = $"flash {flashError:G3}, sdpa {sdpaError:G3}, largest {largest:G3}{(ok ? "" : " FAIL")}";
        }
        check["ms_fwd_bwd"] = $"flash {viaFlash.Ms:F3}, sdpa {sdpa.Ms:F3}";
        check["pass"] = pass;
        return check;
    }
}
