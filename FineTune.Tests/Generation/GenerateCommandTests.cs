using System.IO.Compression;
using FineTune.Engine.Adapters;
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
        // Neither a folder nor a Hub id: a bad value of --model, a usage error.
        var missing = await Run("--model", "/no/such/model", "--prompt", "hi");
        Assert.Equal(2, missing.Code);
        Assert.Equal("", missing.Out);
        Assert.Single(missing.Err.TrimEnd('\n').Split('\n'));
        Assert.Contains("/no/such/model", missing.Err);

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

    [Fact]
    public async Task Chat_template_is_the_default_when_the_model_has_one()
    {
        string folder = ModelFixtures.Folder("qwen2");
        var chat = await Run("--model", folder, "--prompt", "可以退貨嗎？", "--greedy", "--max-new-tokens", "6");
        var explicitChat = await Run("--model", folder, "--prompt", "可以退貨嗎？", "--template", "chat", "--greedy", "--max-new-tokens", "6");
        var tutorial = await Run("--model", folder, "--prompt", "可以退貨嗎？", "--template", "tutorial", "--greedy", "--max-new-tokens", "6");
        Assert.True(chat.Code == 0, chat.Err);
        Assert.Equal(explicitChat.Out, chat.Out);
        Assert.NotEqual(tutorial.Out, chat.Out);

        var custom = await Run("--model", folder, "--prompt", "hi", "--template", "no placeholder here");
        Assert.Equal(1, custom.Code);
        Assert.Contains("{instruction}", custom.Err);
    }

    [Fact]
    public async Task An_adapter_folder_or_zip_changes_the_answer()
    {
        string folder = ModelFixtures.Folder("qwen3");
        string work = Directory.CreateTempSubdirectory("ft-generate-adapter-").FullName;
        try
        {
            string adapter = Path.Combine(work, "adapter");
            _ = ComputeBackend.Current;
            using (var model = ModelLoader.Load(folder, new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 }))
            {
                var settings = new LoraSettings(4, 8, 0.0);
                LoraInjector.Attach(model.NamedLinears(), settings, seed: 1);
                using (no_grad())
                    foreach (var (_, layer) in model.NamedLinears().Where(l => l.Layer.HasAdapter))
                        layer.lora_B!.weight!.copy_(randn(layer.lora_B.weight.shape) * 0.5);
                PeftAdapter.Save(adapter, model.NamedLinears(), settings, folder);
            }
            string zip = Path.Combine(work, "adapter.zip");
            ZipFile.CreateFromDirectory(adapter, zip);

            string[] common = ["--model", folder, "--prompt", "如何聯繫客服？", "--template", "tutorial", "--greedy", "--max-new-tokens", "12"];
            var plain = await Run(common);
            var withFolder = await Run([.. common, "--adapter", adapter]);
            var withZip = await Run([.. common, "--adapter", zip]);
            Assert.True(withFolder.Code == 0, withFolder.Err);
            Assert.True(withZip.Code == 0, withZip.Err);
            Assert.Equal(withFolder.Out, withZip.Out);
            Assert.NotEqual(plain.Out, withFolder.Out);

            var missing = await Run([.. common, "--adapter", Path.Combine(work, "nope.zip")]);
            Assert.Equal(1, missing.Code);
            Assert.Contains("nope.zip", missing.Err);
        }
        finally
        {
            Directory.Delete(work, recursive: true);
        }
    }
}
