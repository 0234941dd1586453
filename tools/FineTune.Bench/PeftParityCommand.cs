using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Models;
using static TorchSharp.torch;

namespace FineTune.Bench;

/// <summary>
/// `peft-parity --base FIXTURE --golden GOLDEN_DIR --peft-bf16 FILE`: the bf16 half of PEFT parity, on this device.
/// Our engine loads the fixture in bf16 with each committed adapter (PEFT-made and ours) and is compared with
/// PEFT's fp32 goldens (FineTune.Tests/Adapters/Golden/peft) and with PEFT's own bf16 logits on the same GPU
/// (tools/parity/peft_bf16.py); PEFT bf16 against its fp32 goldens is reported beside it as the yardstick.
/// </summary>
internal static class PeftParityCommand
{
    public static int Run(string[] args, BackendInfo backend)
    {
        var o = new Options(args);
        string fixture = o.Required("base"), golden = o.Required("golden");
        var pefts = SafeTensors.LoadAll(o.Required("peft-bf16"));
        var inputs = JsonNode.Parse(File.ReadAllText(Path.Combine(golden, "inputs.json")))!["input_ids"]!.AsArray()
            .Select(a => a!.AsArray().Select(v => (long)v!.GetValue<int>()).ToArray()).ToList();
        var report = new JsonObject { ["device"] = backend.Description };
        foreach (var (name, folder, goldenFile) in new[] { ("peft", "peft_adapter", "peft_logits.safetensors"), ("ours", "ours_adapter", "ours_in_peft_logits.safetensors") })
        {
            var fp32 = SafeTensors.LoadAll(Path.Combine(golden, goldenFile));
            using var model = ModelLoader.Load(fixture, new ModelLoadOptions { Device = backend.Device, DType = ScalarType.BFloat16 });
            PeftAdapter.Load(Path.Combine(golden, folder), model.NamedLinears());
            double oursVsFp32 = 0, oursVsPeftBf16 = 0, peftBf16VsFp32 = 0, scale = 0;
            for (int i = 0; i < inputs.Count; i++)
            {
                using var scope = NewDisposeScope();
                using var _ = no_grad();
                var logits = model.Logits(tensor(inputs[i], [1, inputs[i].Length], device: backend.Device))[0].to(ScalarType.Float32).cpu();
                var want = fp32[$"logits.{i}"];
                var peftBf16 = pefts[$"{name}.{i}"];
                oursVsFp32 = Math.Max(oursVsFp32, (logits - want).abs().max().item<float>());
                oursVsPeftBf16 = Math.Max(oursVsPeftBf16, (logits - peftBf16).abs().max().item<float>());
                peftBf16VsFp32 = Math.Max(peftBf16VsFp32, (peftBf16 - want).abs().max().item<float>());
                scale = Math.Max(scale, want.abs().max().item<float>());
            }
            report[name] = new JsonObject
            {
                ["ours_bf16_vs_peft_fp32"] = oursVsFp32,
                ["ours_bf16_vs_peft_bf16"] = oursVsPeftBf16,
                ["peft_bf16_vs_peft_fp32"] = peftBf16VsFp32,
                ["logit_scale"] = scale,
            };
            foreach (var t in fp32.Values) t.Dispose();
        }
        foreach (var t in pefts.Values) t.Dispose();
        Console.WriteLine(report.ToJsonString());
        if (o.Optional("out") is string path) File.WriteAllText(path, report.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        return 0;
    }
}
