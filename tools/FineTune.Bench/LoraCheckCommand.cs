using System.Text.Json.Nodes;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Kernels;
using FineTune.Engine.Models;
using FineTune.Engine.Training;
using static TorchSharp.torch;

namespace FineTune.Bench;

/// <summary>
/// `lora-check FIXTURES_DIR [--out F]`: the LoRA training path's device-only behaviour on the GPU, where the CPU tests
/// cannot reach it. (1) LoRA dropout on CUDA (torch's fused dropout, seeded per draw from the layer's DropoutTape): a
/// checkpointed layer's recompute must draw the masks of its first pass, so the gradients equal those of kept
/// activations (fp32; bound 1e-4 of the largest gradient: the first pass runs the fused kernels, RMSNorm within 7e-7),
/// and other seeds must give other gradients (the check can fail). (2) The bf16 working copies of the adapters give the
/// per-projection casts' losses and fp32 gradients bit for bit, dense and NF4, with dropout on the device; the fused
/// functions (RMSNorm, SiLU·up, dropout + LoRA A, q/k/v's as one function, SiLU·up with down's dropout + LoRA A as one) give the torch ops' graph's gradients with the same device-drawn masks
/// (fp32, 1e-4 of the largest gradient, as above). (3) q/k/v's NF4
/// weights dequantized into one buffer (LoraLinear.ForwardShared) equal each one dequantized alone, bit for bit.
/// FineTune.Tests/Models/GradientCheckpointTests.cs and Training/AdapterWorkingCopiesTests.cs are the CPU side.
/// </summary>
internal static class LoraCheckCommand
{
    public static int Run(string[] args, BackendInfo backend)
    {
        string fixtures = args.Length > 0 ? args[0] : throw new ArgumentException("lora-check FIXTURES_DIR");
        var o = new Options(args[1..]);
        var device = backend.Device;
        var checks = new JsonArray();
        bool allPass = true;
        void Report(string name, bool pass, JsonObject detail)
        {
            allPass &= pass;
            detail["case"] = name;
            detail["pass"] = pass;
            checks.Add(detail);
            Console.WriteLine($"{name,-58} {(pass ? "PASS" : "FAIL")} {detail.ToJsonString()}");
        }

        foreach (string family in new[] { "qwen2", "llama3" })
            foreach (bool quantized in new[] { false, true })
            {
                string folder = Path.Combine(fixtures, family);
                var plain = LossAndGrads(folder, device, ScalarType.Float32, quantized, checkpointing: false, copies: false, seed: 3);
                var checkpointed = LossAndGrads(folder, device, ScalarType.Float32, quantized, checkpointing: true, copies: false, seed: 3);
                var otherSeed = LossAndGrads(folder, device, ScalarType.Float32, quantized, checkpointing: true, copies: false, seed: 4);
                double scale = plain.Grads.Max(MathF.Abs);
                double diff = MaxDiff(plain.Grads, checkpointed.Grads), otherDiff = MaxDiff(plain.Grads, otherSeed.Grads);
                Report($"{family}{(quantized ? " nf4" : "")} fp32: checkpointed = kept, dropout on device",
                    scale > 0 && diff <= 1e-4 * scale && otherDiff > 1e-2 * scale,
                    new JsonObject { ["max_abs_diff"] = diff, ["scale"] = scale, ["other_seed_diff"] = otherDiff, ["loss_plain"] = plain.Loss, ["loss_checkpointed"] = checkpointed.Loss });

                // The same with the masks drawn by the kernels from the micro-batch's device seed (DropoutDraws), as the trainer draws them.
                var plainDrawn = LossAndGrads(folder, device, ScalarType.Float32, quantized, checkpointing: false, copies: false, seed: 3, deviceDraws: true);
                var checkpointedDrawn = LossAndGrads(folder, device, ScalarType.Float32, quantized, checkpointing: true, copies: false, seed: 3, deviceDraws: true);
                var otherSeedDrawn = LossAndGrads(folder, device, ScalarType.Float32, quantized, checkpointing: true, copies: false, seed: 4, deviceDraws: true);
                double scaleDrawn = plainDrawn.Grads.Max(MathF.Abs);
                double diffDrawn = MaxDiff(plainDrawn.Grads, checkpointedDrawn.Grads), otherDiffDrawn = MaxDiff(plainDrawn.Grads, otherSeedDrawn.Grads);
                Report($"{family}{(quantized ? " nf4" : "")} fp32: checkpointed = kept, device-seeded dropout kernel",
                    scaleDrawn > 0 && diffDrawn <= 1e-4 * scaleDrawn && otherDiffDrawn > 1e-2 * scaleDrawn && plainDrawn.KernelDraws > 0 && checkpointedDrawn.KernelDraws > 0,
                    new JsonObject { ["max_abs_diff"] = diffDrawn, ["scale"] = scaleDrawn, ["other_seed_diff"] = otherDiffDrawn, ["loss_plain"] = plainDrawn.Loss, ["loss_checkpointed"] = checkpointedDrawn.Loss, ["kernel_draws"] = plainDrawn.KernelDraws });

                // The fused functions (RMSNorm, SiLU·up, dropout + LoRA A, q/k/v's as one) against the torch ops' graph with the same device-drawn masks.
                var graph = LossAndGrads(folder, device, ScalarType.Float32, quantized, checkpointing: false, copies: false, seed: 3, deviceDraws: true, plain: true);
                double graphDiff = MaxDiff(plainDrawn.Grads, graph.Grads);
                Report($"{family}{(quantized ? " nf4" : "")} fp32: fused functions = torch graph, device-seeded dropout",
                    scaleDrawn > 0 && graphDiff <= 1e-4 * scaleDrawn && plainDrawn.KernelDraws > 0 && graph.KernelDraws == plainDrawn.KernelDraws
                        && plainDrawn.SharedDowns > 0 && graph.SharedDowns == 0,
                    new JsonObject { ["max_abs_diff"] = graphDiff, ["scale"] = scaleDrawn, ["loss_fused"] = plainDrawn.Loss, ["loss_graph"] = graph.Loss, ["kernel_draws"] = graph.KernelDraws, ["qkv_shared_downs"] = plainDrawn.SharedDowns });

                var cast = LossAndGrads(folder, device, ScalarType.BFloat16, quantized, checkpointing: true, copies: false, seed: 3);
                var copied = LossAndGrads(folder, device, ScalarType.BFloat16, quantized, checkpointing: true, copies: true, seed: 3);
                Report($"{family}{(quantized ? " nf4" : "")} bf16: working copies = casts, bit for bit",
                    cast.Loss == copied.Loss && cast.Grads.SequenceEqual(copied.Grads) && cast.Grads.Any(g => g != 0),
                    new JsonObject { ["max_abs_diff"] = MaxDiff(cast.Grads, copied.Grads), ["loss_cast"] = cast.Loss, ["loss_copies"] = copied.Loss });
            }
        // q/k/v dequantized into one buffer (the NF4 kernel writing into row blocks) = each dequantized alone, bit for bit.
        foreach (var dtype in new[] { ScalarType.BFloat16, ScalarType.Float16, ScalarType.Float32 })
        {
            using var scope = NewDisposeScope();
            var layers = new[] { (3584, 3584), (512, 3584), (512, 3584) }.Select(shape =>
            {
                var layer = new LoraLinear(shape.Item2, shape.Item1, hasBias: false, device, ScalarType.Float32);
                layer.QuantizeWeight(randn(shape.Item1, shape.Item2, device: device) * 0.05, dtype);
                return layer;
            }).ToArray();
            using var shared = LoraLinear.DequantizedShared(layers);
            var separate = cat([.. layers.Select(l => l.BaseWeight(dtype))], 0);
            Report($"q/k/v dequantized into one buffer, {dtype}", shared.eq(separate).all().item<bool>(), new JsonObject { ["shape"] = string.Join("x", shared.shape) });
            foreach (var layer in layers) layer.Dispose();
        }
        var result = new JsonObject { ["gpu"] = backend.Description, ["checks"] = checks, ["all_pass"] = allPass };
        Console.WriteLine(result.ToJsonString());
        if (o.Optional("out") is string path) File.WriteAllText(path, result.ToJsonString());
        return allPass ? 0 : 1;
    }

    private static double MaxDiff(float[] a, float[] b) => a.Zip(b, (x, y) => (double)MathF.Abs(x - y)).Max();

    /// <summary>Loss and the adapters' fp32 gradients of one backward on two packed sequences, dropout 0.2 on q/k/v/o and the MLP.</summary>
    private static (double Loss, float[] Grads, int KernelDraws, long SharedDowns) LossAndGrads(string folder, Device device, ScalarType dtype, bool quantized, bool checkpointing, bool copies, int seed, bool deviceDraws = false, bool plain = false)
    {
        FusedOps.PlainAutograd = plain;
        try { return LossAndGradsOnce(folder, device, dtype, quantized, checkpointing, copies, seed, deviceDraws); }
        finally { FusedOps.PlainAutograd = false; }
    }

    private static (double Loss, float[] Grads, int KernelDraws, long SharedDowns) LossAndGradsOnce(string folder, Device device, ScalarType dtype, bool quantized, bool checkpointing, bool copies, int seed, bool deviceDraws)
    {
        using var lm = ModelLoader.Load(folder, new ModelLoadOptions
        {
            Device = device,
            DType = dtype,
            LoadLinearWeight = quantized ? Nf4.QuantizeOnLoad(dtype) : null,
        });
        LoraInjector.Attach(lm.NamedLinears(), new LoraSettings(Rank: 4, Alpha: 8, Dropout: 0.2,
            TargetModules: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]), seed: 11);
        var adapters = lm.NamedLinears().Select(l => l.Layer).Where(l => l.HasAdapter).ToList();
        using (no_grad())
        using (var g = new TorchSharp.torch.Generator(5))
            foreach (var layer in adapters)
                layer.lora_B!.weight!.copy_(randn(layer.lora_B.weight!.shape, generator: g) * 0.1);
        lm.train();
        lm.GradientCheckpointing = checkpointing;
        using var optimizer = new FlatAdamW(lm.parameters().Where(p => p.requires_grad).ToList(), 1e-3);
        using var workingCopies = copies ? AdapterWorkingCopies.For(optimizer, adapters) ?? throw new InvalidOperationException("no working copies") : null;
        manual_seed(seed);
        cuda.manual_seed_all(seed);
        using var scope = NewDisposeScope();
        using var seedTensor = zeros(1, ScalarType.Int64, device);
        using var draws = deviceDraws ? DropoutDraws.Begin(seedTensor, seed) : null;
        long sharedBefore = FusedOps.SharedDownCalls;
        var ids = tensor(Enumerable.Range(0, 13).Select(i => (long)(i * 7 % 50 + 3)).ToArray(), [1, 13], device: device);
        var positions = tensor(Enumerable.Range(0, 6).Concat(Enumerable.Range(0, 7)).Select(i => (long)i).ToArray(), [1, 13], device: device);
        var hidden = lm.HiddenStates(ids, positions, AttentionMaskBuilder.PackedCausalMask(positions)); // (1, 13, H)
        using var probe = new TorchSharp.torch.Generator(9);
        var loss = (hidden.to(ScalarType.Float32) * randn(hidden.shape, generator: probe).to(device)).sum();
        loss.backward();
        workingCopies?.AccumulateGradients();
        return (loss.item<float>(), optimizer.Gradients.cpu().data<float>().ToArray(), draws?.KernelDraws ?? 0, FusedOps.SharedDownCalls - sharedBefore);
    }
}
