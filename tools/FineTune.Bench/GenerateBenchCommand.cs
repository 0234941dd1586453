using System.Diagnostics;
using System.Text.Json.Nodes;
using FineTune.Engine.Backend;
using FineTune.Engine.Generation;
using FineTune.Engine.Kernels;
using Generator = FineTune.Engine.Generation.Generator;
using FineTune.Engine.Models;
using static TorchSharp.torch;

namespace FineTune.Bench;

/// <summary>
/// `generate --model DIR [--new-tokens 256] [--repeats 3] [--qlora] [--profile] [--compare-unfolded] [--out result.json]`: batch 1, greedy,
/// exactly N new tokens with the KV cache, bf16 — the counterpart of tools/bench/reference.py generate (HF generate()),
/// on the same prompt ids. Best of the repeats after one warm-up, as the reference does. --profile adds where a
/// decode step's time goes (<see cref="DecodeProfile"/>); --host-argmax the Generator's greedy step as it was before
/// the argmax moved to the device, timed the same way in the same process, and whether both chose the same ids;
/// --compare-unfolded the same for the decode folds of 2026-11-30 suspended.
/// </summary>
internal static class GenerateBenchCommand
{
    // The reference's prompt: the tutorial template's stand-in ids around 32 question ids.
    private static readonly int[] Prompt = [14374, 220, 64108, 5122, 198, .. Enumerable.Range(100000, 32), 271, 14374, 220, 107420, 5122, 198];

    public static int Run(string[] args, BackendInfo backend)
    {
        var o = new Options(args);
        string folder = o.Required("model");
        int newTokens = o.Int("new-tokens", 256), repeats = o.Int("repeats", 3);
        var dtype = backend.ComputeDType;
        bool qlora = o.Flag("qlora"); // a 4-bit base, as chat with a QLoRA run's base model
        using var model = ModelLoader.Load(folder, ModelLoadOptions.Base(dtype, qlora, device: backend.Device));
        var generator = new Generator(model);
        // The same ids as the reference; folded into small vocabularies (the test fixtures) so the command runs there too.
        int[] prompt = [.. Prompt.Select(id => id % model.Config.VocabSize)];
        var settings = GenerationSettings.Greedy(newTokens); // no stop ids: always N tokens, like min_new_tokens in HF

        int produced = generator.Generate(prompt, settings).Count(); // warm-up
        var runs = new List<double>();
        for (int i = 0; i < repeats; i++)
        {
            if (backend.IsCuda) cuda.synchronize();
            var clock = Stopwatch.StartNew();
            produced = generator.Generate(prompt, settings).Count();
            if (backend.IsCuda) cuda.synchronize();
            runs.Add(clock.Elapsed.TotalSeconds);
        }
        double best = runs.Min();
        var result = new JsonObject
        {
            ["stack"] = "finetune",
            ["workload"] = "generate",
            ["mode"] = qlora ? "qlora-nf4" : "lora-16bit",
            ["model"] = Path.GetFileName(folder.TrimEnd('/')),
            ["prompt_tokens"] = prompt.Length,
            ["new_tokens"] = produced,
            ["wall_s"] = best,
            ["runs_s"] = new JsonArray(runs.Select(r => (JsonNode)r).ToArray()),
            ["tokens_per_s"] = produced / best,
            ["gpu"] = backend.Description,
        };
        if (o.Flag("host-argmax")) result["host_argmax"] = HostArgmaxBaseline(model, generator, prompt, settings, repeats, backend);
        if (o.Flag("compare-unfolded")) result["unfolded"] = UnfoldedBaseline(model, generator, prompt, settings, repeats, backend);
        if (o.Flag("profile")) result["decode_profile"] = DecodeProfile(model, prompt, newTokens, backend);
        Console.WriteLine(result.ToJsonString());
        if (o.Optional("out") is string path) File.WriteAllText(path, result.ToJsonString());
        return 0;
    }

    /// <summary>
    /// Per decoded token, in ms: the host's time to issue the layers (HiddenStates) and lm_head, the wait for the GPU
    /// after that (argmax.item on the device), and the whole step; then the same with a device sync right after the
    /// layers (their GPU time shows as the wait). Host issue close to the whole step means decode is bound by the host.
    /// Also the Generator's own logits path (fp32 logits to the host, argmax there) against argmax on the device.
    /// </summary>
    private static JsonObject DecodeProfile(CausalLM model, int[] prompt, int newTokens, BackendInfo backend)
    {
        var profile = new JsonObject();
        using var noGrad = no_grad();
        foreach (bool synced in new[] { false, true, false })
        {
            double issueLayers = 0, issueHead = 0, wait = 0, total = 0, hostLogits = 0;
            using var cache = model.NewCache(prompt.Length + newTokens + 1);
            long id;
            using (NewDisposeScope())
            {
                var hidden = model.HiddenStates(tensor(prompt.Select(i => (long)i).ToArray(), [1, prompt.Length]), cache: cache);
                id = model.lm_head.forward(hidden.narrow(1, prompt.Length - 1, 1)).argmax().item<long>();
            }
            for (int i = 0; i < newTokens; i++)
            {
                using var scope = NewDisposeScope();
                var clock = Stopwatch.StartNew();
                var hidden = model.HiddenStates(tensor(new[] { id }, [1, 1]), cache: cache);
                double t1 = clock.Elapsed.TotalMilliseconds;
                if (synced && backend.IsCuda) cuda.synchronize();
                double t2 = clock.Elapsed.TotalMilliseconds;
                var logits = model.lm_head.forward(hidden).reshape(-1);
                double t3 = clock.Elapsed.TotalMilliseconds;
                id = logits.argmax().item<long>();
                double t4 = clock.Elapsed.TotalMilliseconds;
                issueLayers += t1; wait += (t2 - t1) + (t4 - t3); issueHead += t3 - t2; total += t4;
                if (i % 8 == 0)
                {
                    var hostClock = Stopwatch.StartNew();
                    float[] host = logits.to(ScalarType.Float32).cpu().data<float>().ToArray();
                    int best = 0;
                    for (int k = 1; k < host.Length; k++) if (host[k] > host[best]) best = k;
                    hostLogits += hostClock.Elapsed.TotalMilliseconds * 8;
                }
            }
            profile[synced ? "synced" : profile.ContainsKey("host") ? "host_again" : "host"] = new JsonObject
            {
                ["issue_layers_ms"] = issueLayers / newTokens,
                ["issue_lm_head_ms"] = issueHead / newTokens,
                ["wait_ms"] = wait / newTokens,
                ["step_ms"] = total / newTokens,
                ["generator_logits_to_host_and_argmax_ms"] = hostLogits / newTokens,
            };
        }
        return profile;
    }

    /// <summary>
    /// The same Generator with the decode folds of 2026-11-30 suspended (<see cref="FusedOps.DecodeFoldsSuspended"/>:
    /// q/k/v and gate/up as separate matmuls, RoPE and the cache store, the residual add and the norm as separate ops,
    /// K/V repeated for attention), timed the same way in the same process; ids_equal compares the chosen ids.
    /// </summary>
    private static JsonObject UnfoldedBaseline(CausalLM model, Generator generator, int[] prompt, GenerationSettings settings, int repeats, BackendInfo backend)
    {
        int[] folded = [.. generator.Generate(prompt, settings)];
        FusedOps.DecodeFoldsSuspended = true;
        try
        {
            int[] unfolded = [.. generator.Generate(prompt, settings)]; // warm-up
            var runs = new List<double>();
            for (int i = 0; i < repeats; i++)
            {
                if (backend.IsCuda) cuda.synchronize();
                var clock = Stopwatch.StartNew();
                unfolded = [.. generator.Generate(prompt, settings)];
                if (backend.IsCuda) cuda.synchronize();
                runs.Add(clock.Elapsed.TotalSeconds);
            }
            int first = folded.Zip(unfolded).Select((pair, i) => (pair, i)).Where(x => x.pair.First != x.pair.Second).Select(x => x.i).DefaultIfEmpty(-1).First();
            var comparison = new JsonObject
            {
                ["wall_s"] = runs.Min(),
                ["runs_s"] = new JsonArray(runs.Select(r => (JsonNode)r).ToArray()),
                ["tokens_per_s"] = unfolded.Length / runs.Min(),
                ["ids_equal"] = folded.SequenceEqual(unfolded),
                ["first_difference"] = first,
            };
            if (first >= 0) comparison["at_first_difference"] = TieAt(model, [.. prompt, .. folded[..first]], folded[first], unfolded[first]);
            return comparison;
        }
        finally { FusedOps.DecodeFoldsSuspended = false; }
    }

    /// <summary>
    /// Where the folded and unfolded greedy runs first chose different ids: the logits of both ids after the common
    /// prefix (one prefill pass, folded and unfolded), their gap, and the spacing of the compute dtype's values at that
    /// magnitude. A gap of a step or two of that spacing is a near tie that either rounding can flip.
    /// </summary>
    private static JsonObject TieAt(CausalLM model, int[] ids, int foldedId, int unfoldedId)
    {
        using var _ = no_grad();
        var result = new JsonObject { ["folded_id"] = foldedId, ["unfolded_id"] = unfoldedId };
        bool suspended = FusedOps.DecodeFoldsSuspended;
        try
        {
            foreach (bool fold in new[] { true, false })
            {
                FusedOps.DecodeFoldsSuspended = !fold;
                using var scope = NewDisposeScope();
                var hidden = model.HiddenStates(tensor(ids.Select(i => (long)i).ToArray(), [1, ids.Length], device: model.lm_head.weight?.device ?? model.lm_head.weight_nf4!.device));
                var logits = model.lm_head.forward(hidden.narrow(1, ids.Length - 1, 1)).reshape(-1); // (V) in the compute dtype
                float a = logits[foldedId].to(ScalarType.Float32).item<float>(), b = logits[unfoldedId].to(ScalarType.Float32).item<float>();
                // The spacing of bf16/fp16 values near |a|: 2^(exponent - mantissa bits).
                int mantissa = logits.dtype == ScalarType.BFloat16 ? 7 : logits.dtype == ScalarType.Float16 ? 10 : 23;
                double spacing = Math.Pow(2, Math.Floor(Math.Log2(Math.Max(Math.Abs(a), 1e-30))) - mantissa);
                result[fold ? "folded_pass" : "unfolded_pass"] = new JsonObject
                {
                    ["logit_folded_id"] = a, ["logit_unfolded_id"] = b, ["gap"] = a - b, ["dtype_spacing"] = spacing,
                    ["argmax"] = logits.argmax().item<long>(),
                };
            }
        }
        finally { FusedOps.DecodeFoldsSuspended = suspended; }
        return result;
    }

    /// <summary>
    /// The Generator's greedy decode before the argmax moved to the device (FineTune 2026-11-29): every token's fp32
    /// logits to the host and <see cref="LogitsProcessing.NextToken"/> there. Same prompt, cache and layers; timed
    /// as the Generator (best of the repeats after a warm-up); ids_equal compares its ids with the Generator's.
    /// </summary>
    private static JsonObject HostArgmaxBaseline(CausalLM model, Generator generator, int[] prompt, GenerationSettings settings, int repeats, BackendInfo backend)
    {
        int[] Run()
        {
            using var noGrad = no_grad();
            using var cache = model.NewCache(prompt.Length + settings.MaxNewTokens);
            var sequence = prompt.ToList();
            var random = new Random(0);
            int pending = prompt.Length;
            for (int i = 0; i < settings.MaxNewTokens; i++)
            {
                using var scope = NewDisposeScope();
                long[] ids = sequence.Skip(sequence.Count - pending).Select(id => (long)id).ToArray();
                var hidden = model.HiddenStates(tensor(ids, [1, ids.Length]), cache: cache);          // (1, T, H)
                var logits = model.lm_head.forward(hidden.narrow(1, hidden.shape[1] - 1, 1)).reshape(-1); // (V)
                float[] host = logits.to(ScalarType.Float32).cpu().data<float>().ToArray();
                sequence.Add(LogitsProcessing.NextToken(host, sequence, settings, random));
                pending = 1;
            }
            return [.. sequence.Skip(prompt.Length)];
        }
        int[] baseline = Run(); // warm-up
        var runs = new List<double>();
        for (int i = 0; i < repeats; i++)
        {
            if (backend.IsCuda) cuda.synchronize();
            var clock = Stopwatch.StartNew();
            baseline = Run();
            if (backend.IsCuda) cuda.synchronize();
            runs.Add(clock.Elapsed.TotalSeconds);
        }
        int[] current = [.. generator.Generate(prompt, settings)];
        return new JsonObject
        {
            ["wall_s"] = runs.Min(),
            ["runs_s"] = new JsonArray(runs.Select(r => (JsonNode)r).ToArray()),
            ["tokens_per_s"] = baseline.Length / runs.Min(),
            ["ids_equal"] = baseline.SequenceEqual(current),
            ["first_difference"] = baseline.Zip(current).Select((pair, i) => (pair, i)).Where(x => x.pair.First != x.pair.Second).Select(x => x.i).DefaultIfEmpty(-1).First(),
        };
    }
}
