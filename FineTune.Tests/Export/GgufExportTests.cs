using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Export;
using FineTune.Engine.Generation;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;
using FineTune.Engine.Training;
using FineTune.Tests.Adapters;
using FineTune.Tests.Models;
using FineTune.Tests.Support;
using FineTune.Web.Headless;
using Xunit.Abstractions;
using static TorchSharp.torch;
using Generator = FineTune.Engine.Generation.Generator;

namespace FineTune.Tests.Export;

/// <summary>
/// GGUF files we write, read by llama.cpp itself (LLamaSharp 0.30 + LLamaSharp.Backend.Cpu): f16 gives exactly our
/// engine's greedy tokens on the fixture models, q8_0 the same first tokens, and llama.cpp tokenizes text as ours does.
/// </summary>
[Trait(Category.Name, Category.Parity)]
public sealed class GgufExportTests(ITestOutputHelper output) : IDisposable
{
    public static TheoryData<string> Fixtures => new(["qwen2", "qwen3", "llama3", "mistral"]);

    /// <summary>
    /// The bound: llama.cpp's greedy token equals ours at every step until the first step where our own top-1/top-2
    /// logit gap is below this (a near tie, after which the runs may rightly part). The fixtures' random weights give
    /// gaps of 0.01 and less now and then; f16 weights move logits by ~1e-4 here, q8_0 by ~1e-2, q4_0 by ~1e-1.
    /// </summary>
    private const float F16Tie = 0.001f, Q8Tie = 0.05f, Q4Tie = 0.25f;

    private readonly string _folder = TestPaths.NewTempFolder("gguf");

    [LlamaCppTheory]
    [MemberData(nameof(Fixtures))]
    public void Llama_cpp_gives_our_greedy_tokens_until_a_near_tie_f16_q8_0_q4_0(string fixture)
    {
        string modelFolder = ModelFixtures.Folder(fixture);
        var golden = ModelFixtures.LoadGolden(fixture);
        var ours = OurGreedy(modelFolder, golden.Greedy.Select(g => g.InputIds).ToList(), 32, adapter: null);
        var margins = OurMargins(modelFolder, golden.Greedy.Select(g => g.InputIds).ToList(), ours);

        foreach (var type in new[] { GgufFileType.F16, GgufFileType.Q8_0, GgufFileType.Q4_0 })
        {
            string path = Path.Combine(_folder, $"{fixture}-{type}.gguf");
            GgufExport.Export(modelFolder, path, new GgufExportOptions(type));
            using var llama = new LlamaCpp(path);
            for (int i = 0; i < golden.Greedy.Count; i++)
            {
                int[] theirs = llama.Greedy(golden.Greedy[i].InputIds, 32);
                int k = Enumerable.Range(0, 32).FirstOrDefault(j => ours[i][j] != theirs[j], -1);
                output.WriteLine($"{fixture} {type} prompt {i}: first difference {k} margin {(k >= 0 ? margins[i][k] : 0):0.00000} min margin before {(k > 0 ? margins[i].Take(k).Min() : 0):0.00000}\n  ours      {string.Join(' ', ours[i])}\n  llama.cpp {string.Join(' ', theirs)}");
                if (type == GgufFileType.F16) AssertSameUntilNearTie(ours[i], theirs, margins[i], F16Tie);
                else if (type == GgufFileType.Q8_0) AssertSameUntilNearTie(ours[i], theirs, margins[i], Q8Tie);
                else AssertSameUntilNearTie(ours[i], theirs, margins[i], Q4Tie);
            }
        }
    }

    private static List<int[]> OurGreedy(string modelFolder, List<int[]> prompts, int count, string? adapter)
    {
        _ = ComputeBackend.Current;
        using var model = ModelLoader.Load(modelFolder, new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        if (adapter is not null) PeftAdapter.Load(adapter, model.NamedLinears());
        var generator = new Generator(model);
        return prompts.Select(p => generator.Generate(p, GenerationSettings.Greedy(count)).ToArray()).ToList();
    }

    [LlamaCppTheory]
    [MemberData(nameof(Fixtures))]
    public void Llama_cpp_tokenizes_text_as_we_do_and_reads_the_metadata(string fixture)
    {
        string modelFolder = ModelFixtures.Folder(fixture);
        var tokenizer = TokenizerLoader.Load(modelFolder);
        string path = Path.Combine(_folder, $"{fixture}.gguf");
        var result = GgufExport.Export(modelFolder, path, new GgufExportOptions(GgufFileType.Q8_0));
        using var llama = new LlamaCpp(path);

        Assert.Equal(ModelConfig.Load(modelFolder).VocabSize, llama.VocabularyCount);
        Assert.Equal(fixture is "llama3" or "mistral" ? "llama" : fixture, llama.Metadata["general.architecture"]);
        Assert.Equal(fixture == "qwen2" || fixture == "qwen3" ? "qwen2" : "llama-bpe", result.PreTokenizer);
        Assert.Equal(tokenizer.ChatTemplate, llama.Metadata["tokenizer.chat_template"]);
        string[] texts =
        [
            "Hello world! 你好，世界。", "  leading spaces and\ttabs\n\nnew lines", "numbers 1234567 and 3.14",
            "I've been 'told' he's there", "第一個微調專案：用 Excel 的問答訓練 Qwen",
        ];
        var chat = ChatTemplate.ForTokenizer(tokenizer)!;
        texts = [.. texts, chat.Render([ChatMessage.User("什麼是 LoRA？"), ChatMessage.Assistant("低秩適配。")], addGenerationPrompt: false)];
        foreach (string text in texts)
        {
            // Chat renders are tokenized without adding BOS (they write it themselves); plain text as the tokenizer does.
            bool plain = text != texts[^1];
            var ours = tokenizer.Encode(text, addSpecialTokens: plain);
            Assert.Equal(ours, llama.Tokenize(text, addBos: plain));
        }
    }

    [LlamaCppFact]
    public async Task Export_gguf_command_merges_the_adapter_and_writes_a_modelfile()
    {
        string modelFolder = ModelFixtures.Folder("qwen2");
        string adapter = Path.Combine(_folder, "adapter");
        MakeAdapter(modelFolder, adapter);
        string outPath = Path.Combine(_folder, "out", "qwen2-run.gguf");
        var stdout = new StringWriter();
        var stderr = new StringWriter();

        int code = await ExportGgufCommand.RunAsync(["--model", modelFolder, "--adapter", adapter, "--out", outPath, "--type", "f16"], stdout, stderr);

        output.WriteLine(stdout.ToString());
        Assert.True(code == 0, stderr.ToString());
        Assert.Contains("ollama create qwen2-run -f qwen2-run.Modelfile", stdout.ToString());
        string modelfile = File.ReadAllText(Path.Combine(_folder, "out", "qwen2-run.Modelfile"));
        output.WriteLine(modelfile);
        Assert.StartsWith("FROM ./qwen2-run.gguf\n", modelfile);
        // Qwen2.5's template with its default system prompt when the request has none, as training rendered it.
        Assert.Contains("{{ else }}<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n<|im_start|>user\n{{ .Prompt }}<|im_end|>\n<|im_start|>assistant\n{{ end }}{{ .Response }}<|im_end|>\n", modelfile);
        Assert.Contains("TEMPLATE \"\"\"{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n", modelfile);
        Assert.Contains("PARAMETER stop \"<|im_end|>\"", modelfile);

        var golden = ModelFixtures.LoadGolden("qwen2");
        var prompts = golden.Greedy.Select(g => g.InputIds).ToList();
        var ours = OurGreedy(modelFolder, prompts, 32, adapter);
        var unmerged = OurGreedy(modelFolder, prompts, 32, adapter: null);
        Assert.NotEqual(unmerged, ours); // the adapter changes the model, so the merge is seen
        var margins = OurMargins(modelFolder, prompts, ours, adapter);
        using var llama = new LlamaCpp(outPath);
        for (int i = 0; i < prompts.Count; i++)
        {
            int[] theirs = llama.Greedy(prompts[i], 32);
            output.WriteLine($"prompt {i}\n  ours (adapter on the side) {string.Join(' ', ours[i])}\n  llama.cpp (merged f16)     {string.Join(' ', theirs)}");
            AssertSameUntilNearTie(ours[i], theirs, margins[i], F16Tie);
        }
    }

    [Theory]
    [InlineData("--model")]
    [InlineData("--type")]
    public async Task Export_gguf_command_explains_missing_arguments(string missing)
    {
        var all = new Dictionary<string, string> { ["--model"] = ModelFixtures.Folder("qwen2"), ["--out"] = Path.Combine(_folder, "x.gguf"), ["--type"] = "q8_0" };
        all.Remove(missing);
        var stderr = new StringWriter();
        int code = await ExportGgufCommand.RunAsync(all.SelectMany(kv => new[] { kv.Key, kv.Value }).ToList(), TextWriter.Null, stderr);
        Assert.Equal(2, code);
        string line = Assert.Single(stderr.ToString().TrimEnd('\n').Split('\n'));
        Assert.StartsWith("export-gguf: ", line);
        Assert.Contains($"'{missing}' is required", line);
    }

    /// <summary>A LoRA adapter on q/k/v/o/gate with non-zero B (a fresh adapter's B is zero and would change nothing).</summary>
    private static void MakeAdapter(string modelFolder, string adapterFolder)
    {
        _ = ComputeBackend.Current;
        using var model = ModelLoader.Load(modelFolder, new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        var lora = new LoraSettings(8, 16, 0, ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj"]);
        var linears = new CausalLmTraining(model).NamedLinears().ToArray();
        LoraInjector.Attach(linears, lora, seed: 7);
        var generator = new TorchSharp.torch.Generator(11);
        using (no_grad())
            foreach (var (_, layer) in linears.Where(l => l.Layer.HasAdapter))
                layer.lora_B!.weight!.copy_(randn(layer.lora_B.weight.shape, generator: generator) * 0.05);
        PeftAdapter.Save(adapterFolder, linears, lora, modelFolder);
    }

    private static void AssertSameUntilNearTie(int[] ours, int[] theirs, float[] margins, float tie)
    {
        for (int j = 0; j < ours.Length; j++)
        {
            if (ours[j] == theirs[j]) continue;
            Assert.True(margins[j] < tie,
                $"llama.cpp chose {theirs[j]} where we chose {ours[j]} at step {j}, though our logits separate them by {margins[j]:0.#####} (≥ {tie}).");
            return;
        }
    }

    /// <summary>Per generated position: our top-1 minus top-2 logit (fp32, full forward over prompt + tokens).</summary>
    private static List<float[]> OurMargins(string modelFolder, List<int[]> prompts, List<int[]> tokens, string? adapter = null)
    {
        using var model = ModelLoader.Load(modelFolder, new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        if (adapter is not null) PeftAdapter.Load(adapter, model.NamedLinears());
        var result = new List<float[]>();
        for (int i = 0; i < prompts.Count; i++)
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            long[] ids = [.. prompts[i].Select(x => (long)x), .. tokens[i].Select(x => (long)x)];
            var logits = model.forward(tensor(ids).unsqueeze(0)).squeeze(0);                       // (T, V)
            var top = logits.narrow(0, prompts[i].Length - 1, tokens[i].Length).topk(2, dim: -1).values; // (n, 2)
            result.Add((top.select(1, 0) - top.select(1, 1)).data<float>().ToArray());
        }
        return result;
    }

    public void Dispose()
    {
        try { Directory.Delete(_folder, recursive: true); } catch (IOException) { }
    }
}
