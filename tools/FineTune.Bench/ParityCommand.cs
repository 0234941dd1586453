using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Engine.Backend;
using FineTune.Engine.Generation;
using FineTune.Engine.Models;
using static TorchSharp.torch;

namespace FineTune.Bench;

/// <summary>
/// `parity FIXTURES_DIR`: every fixture model of FineTune.Tests/Fixtures/models on this device in fp32, bf16 and
/// fp16, against transformers' fp32 golden logits; the greedy continuation in fp32. The GPU counterpart of the
/// Category=Parity tests (the GPU machine has no .NET SDK to run xunit).
/// </summary>
internal static class ParityCommand
{
    public static int Run(string[] args, BackendInfo backend)
    {
        if (args.Length < 1) throw new ArgumentException("usage: parity FIXTURES_DIR");
        var results = new JsonArray();
        bool ok = true;
        foreach (string folder in Directory.GetDirectories(args[0]).Order())
        {
            var golden = JsonNode.Parse(File.ReadAllText(Path.Combine(folder, "golden.json")))!;
            var expected = SafeTensors.LoadAll(Path.Combine(folder, "golden.safetensors"));
            var row = new JsonObject { ["fixture"] = Path.GetFileName(folder), ["device"] = backend.Description };
            foreach (var dtype in new[] { ScalarType.Float32, ScalarType.BFloat16, ScalarType.Float16 })
            {
                using var model = ModelLoader.Load(folder, new ModelLoadOptions { Device = backend.Device, DType = dtype });
                double maxDiff = 0, maxScale = 0;
                foreach (var entry in golden["logits"]!.AsArray())
                {
                    using var scope = NewDisposeScope();
                    using var _ = no_grad();
                    long[] ids = entry!["input_ids"]!.AsArray().Select(v => (long)v!.GetValue<int>()).ToArray();
                    var logits = model.Logits(tensor(ids, [1, ids.Length], device: backend.Device))[0].to(ScalarType.Float32).cpu();
                    var want = expected[entry["tensor"]!.GetValue<string>()];
                    maxDiff = Math.Max(maxDiff, (logits - want).abs().max().item<float>());
                    maxScale = Math.Max(maxScale, want.abs().max().item<float>());
                }
                string key = dtype.ToString().ToLowerInvariant();
                row[$"{key}_max_abs_diff"] = maxDiff;
                row["logit_scale"] = maxScale;
                if (dtype == ScalarType.Float32)
                {
                    var greedy = golden["greedy"]![0]!;
                    int[] prompt = greedy["input_ids"]!.AsArray().Select(v => v!.GetValue<int>()).ToArray();
                    int[] want = greedy["new_tokens"]!.AsArray().Select(v => v!.GetValue<int>()).ToArray();
                    int[] got = new FineTune.Engine.Generation.Generator(model).Generate(prompt, GenerationSettings.Greedy(want.Length)).ToArray();
                    row["float32_greedy_equal"] = got.SequenceEqual(want);
                    ok &= got.SequenceEqual(want) && maxDiff <= 1e-4;
                }
            }
            foreach (var t in expected.Values) t.Dispose();
            results.Add(row);
            Console.WriteLine(row.ToJsonString());
        }
        Console.WriteLine(JsonSerializer.Serialize(new { parity = ok ? "fp32 within 1e-4 and greedy equal on every fixture" : "FAILED" }));
        return ok ? 0 : 1;
    }
}
