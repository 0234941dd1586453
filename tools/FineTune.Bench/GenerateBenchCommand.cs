using System.Diagnostics;
using System.Text.Json.Nodes;
using FineTune.Engine.Backend;
using FineTune.Engine.Generation;
using Generator = FineTune.Engine.Generation.Generator;
using FineTune.Engine.Models;
using static TorchSharp.torch;

namespace FineTune.Bench;

/// <summary>
/// `generate --model DIR [--new-tokens 256] [--repeats 3] [--qlora] [--out result.json]`: batch 1, greedy, exactly N new
/// tokens with the KV cache, bf16 — the counterpart of tools/bench/reference.py generate (HF generate()), on the
/// same prompt ids. Best of the repeats after one warm-up, as the reference does.
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
        Console.WriteLine(result.ToJsonString());
        if (o.Optional("out") is string path) File.WriteAllText(path, result.ToJsonString());
        return 0;
    }
}
