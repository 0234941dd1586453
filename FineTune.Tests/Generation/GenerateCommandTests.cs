using FineTune.Engine.Backend;
using FineTune.Engine.Generation;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Models;
using FineTune.Web.Headless;
using static TorchSharp.torch;
using Generator = FineTune.Engine.Generation.Generator;

namespace FineTune.Tests.Generation;

/// <summary>The headless `generate` command on the fixture models.</summary>
public class GenerateCommandTests
{
    private static async Task<(int Code, string Out, string Err)> Run(params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = await GenerateCommand.RunAsync(args, output, error);
        return (code, output.ToString(), error.ToString());
    }

    [Fact]
    public async Task Prints_only_the_greedy_continuation_of_a_raw_prompt()
    {
        string folder = ModelFixtures.Folder("llama3");
        const string prompt = "Fine-tuning adapts a pretrained language model";
        var (code, output, error) = await Run("--model", folder, "--prompt", prompt, "--raw", "--greedy", "--max-new-tokens", "10");
        Assert.True(code == 0, error);
        Assert.Equal("", error);
        Assert.NotEmpty(output);

        _ = ComputeBackend.Current;
        var tokenizer = TokenizerLoader.Load(folder);
        using var model = ModelLoader.Load(folder, new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        var text = new TextGenerator(new Generator(model), tokenizer);
        var settings = text.DefaultSettings(folder) with { DoSample = false, MaxNewTokens = 10 };
        Assert.Equal(await text.GenerateAsync(prompt, settings), output);
    }

    [Fact]
    public async Task Tutorial_template_and_seeded_sampling_are_reproducible()
    {
        string folder = ModelFixtures.Folder("qwen-v1");
        string[] args = ["--model", folder, "--prompt", "可以退貨嗎？", "--template", "tutorial", "--temperature", "0.9", "--top-p", "0.95", "--max-new-tokens", "8", "--seed", "5"];
        var first = await Run(args);
        var second = await Run(args);
        Assert.True(first.Code == 0, first.Err);
        Assert.Equal(first.Out, second.Out);
    }

    [Theory]
    [InlineData("--prompt", "hi")]                                               // no --model
    [InlineData("--model", "x", "--prompt", "hi", "--greedy", "--temperature", "0.5")]
    [InlineData("--model", "x", "--prompt", "hi", "--top-p", "1.5")]
    [InlineData("--model", "x", "--prompt", "hi", "--max-new-tokens", "zero")]
    [InlineData("--model", "x", "--prompt", "hi", "--bogus")]
    public async Task Bad_arguments_give_a_usage_error(params string[] args)
    {
        var (code, output, error) = await Run(args);
        Assert.Equal(2, code);
        Assert.Equal("", output);
        Assert.StartsWith("generate: ", error);
    }

    [Fact]
    public async Task An_unreadable_model_gives_one_clear_line()
    {
        var missing = await Run("--model", "/no/such/model", "--prompt", "hi");
        Assert.Equal(1, missing.Code);
        Assert.Equal("", missing.Out);
        Assert.Single(missing.Err.TrimEnd('\n').Split('\n'));
        Assert.Contains("/no/such/model", missing.Err);

        var hub = await Run("--model", "Qwen/Qwen2.5-0.5B-Instruct", "--prompt", "hi");
        Assert.Equal(1, hub.Code);
        Assert.Contains("Qwen/Qwen2.5-0.5B-Instruct", hub.Err);

        string empty = Directory.CreateTempSubdirectory("ft-empty-model-").FullName;
        try
        {
            File.WriteAllText(Path.Combine(empty, "config.json"), """{"model_type": "bert"}""");
            var unsupported = await Run("--model", empty, "--prompt", "hi");
            Assert.Equal(1, unsupported.Code);
            Assert.Single(unsupported.Err.TrimEnd('\n').Split('\n'));
        }
        finally
        {
            Directory.Delete(empty, recursive: true);
        }
    }
}
