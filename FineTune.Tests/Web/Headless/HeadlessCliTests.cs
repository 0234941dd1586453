using System.Text.Json.Nodes;
using FineTune.Engine.Backend;
using FineTune.Engine.Hub;
using FineTune.Tests.Adapters;
using FineTune.Tests.Hub;
using FineTune.Tests.Models;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using FineTune.Web.Headless;

namespace FineTune.Tests.Web.Headless;

/// <summary>
/// The headless command line (System.CommandLine): help on the root and on every command, usage errors as one line
/// and exit 2, and the one --model option taking a folder or a Hub id resolved from the Hugging Face cache.
/// </summary>
public sealed class HeadlessCliTests : IDisposable
{
    private readonly string _folder = TestPaths.NewTempFolder("headless-cli");

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private static async Task<(int Code, string Out, string Err)> Run(HubOptions? hub, params string[] args)
    {
        var output = new StringWriter();
        var error = new StringWriter();
        int code = await HeadlessCli.RunAsync(args, new HeadlessConsole(output, error) { Hub = hub ?? new HubOptions() });
        return (code, output.ToString(), error.ToString());
    }

    private static Task<(int Code, string Out, string Err)> Run(params string[] args) => Run(null, args);

    [Fact]
    public async Task Help_on_the_root_lists_the_commands_and_each_command_lists_its_options()
    {
        var root = await Run("--help");
        Assert.Equal((0, ""), (root.Code, root.Err));
        foreach (string command in HeadlessCli.Commands)
            Assert.Contains($"  {command}", root.Out);

        var options = new Dictionary<string, string[]>
        {
            ["train"] = ["--model <folder|hub id>", "--data", "--output", "--epochs", "--lr", "--rank", "--alpha", "--targets", "--qlora", "--no-double-quant",
                "--template", "--whole-text", "--schedule <linear|cosine|constant>", "--layout", "--resume", "--init-adapter", "--merged",
                "--gradient-checkpointing <auto|on|off>", "[default: 1024]"],
            ["generate"] = ["--model <folder|hub id>", "--prompt", "--raw", "--template", "--greedy", "--temperature", "--top-p", "--top-k", "--max-new-tokens", "--seed", "--adapter"],
            ["export-gguf"] = ["--model <folder|hub id>", "--adapter", "--out", "--type"],
            ["healthcheck"] = ["<url>"],
        };
        foreach (var (command, names) in options)
        {
            var help = await Run(command, "--help");
            Assert.Equal((0, ""), (help.Code, help.Err));
            foreach (string name in names) Assert.Contains(name, help.Out);
        }
    }

    [Fact]
    public void Only_command_names_and_help_leave_the_web_app_out()
    {
        Assert.True(HeadlessCli.IsCommandLine(["train", "--help"]));
        Assert.True(HeadlessCli.IsCommandLine(["--help"]));
        Assert.False(HeadlessCli.IsCommandLine([]));
        Assert.False(HeadlessCli.IsCommandLine(["--urls", "http://0.0.0.0:8080"]));
    }

    [Theory]
    [InlineData("'--bogus'", "train", "--bogus", "--model", "m")]                                            // unknown option
    [InlineData("'--data' is required", "train", "--model", "FIXTURE", "--output", "a.zip")]                 // missing required
    [InlineData("--epochs must be a number above 0; got 'many'", "train", "--model", "FIXTURE", "--data", "CSV", "--output", "a.zip", "--epochs", "many")]
    [InlineData("--schedule must be linear, cosine or constant; got 'steep'", "train", "--model", "FIXTURE", "--data", "CSV", "--output", "a.zip", "--schedule", "steep")]
    [InlineData("rank r must be at least 1", "train", "--model", "FIXTURE", "--data", "CSV", "--output", "a.zip", "--rank", "0")] // checked by the engine's LoraSettings
    [InlineData("'--prompt' is required", "generate", "--model", "FIXTURE")]
    [InlineData("--model '/no/such/model' is not a folder, nor a Hub id", "generate", "--model", "/no/such/model", "--prompt", "hi")]
    [InlineData("--type 'q5_k' should be f16, q8_0 or q4_0", "export-gguf", "--model", "FIXTURE", "--out", "x.gguf", "--type", "q5_k")]
    [InlineData("'frob'", "healthcheck", "http://127.0.0.1:9/healthz", "frob")]
    public async Task Usage_errors_exit_2_with_one_line_naming_the_problem(string expected, params string[] args)
    {
        args = [.. args.Select(a => a switch
        {
            "FIXTURE" => ModelFixtures.Folder("qwen2"),
            "CSV" => TestPaths.InRepo("samples", "tutorial-qa.csv"),
            "a.zip" => Path.Combine(_folder, "a.zip"),
            _ => a,
        })];
        var (code, output, error) = await Run(args);
        Assert.Equal(2, code);
        Assert.Equal("", output);
        string line = Assert.Single(error.TrimEnd('\n').Split('\n'));
        Assert.StartsWith($"{args[0]}: ", line);
        Assert.Contains(expected, line);
        Assert.False(File.Exists(Path.Combine(_folder, "a.zip")));
    }

    [Fact]
    public async Task A_usage_error_is_answered_at_once_in_a_fresh_process_even_where_libtorch_cannot_load()
    {
        // Processes of their own, where libtorch is not loaded yet, as for a user's command (in this process an earlier
        // test may have loaded it already, and choosing the backend would then print nothing).
        string[] args = ["train", "--model", ModelFixtures.Folder("qwen2"), "--data", TestPaths.InRepo("samples", "tutorial-qa.csv"),
            "--output", Path.Combine(_folder, "a.zip"), "--epochs", "many"];
        string broken = Path.Combine(_folder, "broken-libtorch");
        Directory.CreateDirectory(broken);
        File.WriteAllText(Path.Combine(broken, "libc10.so"), "not an ELF file");

        var fresh = await WebAppProcess.RunCommandAsync(args);
        // A libtorch that cannot load is not what this command line needs to hear first: it is wrong anywhere.
        var withoutLibTorch = await WebAppProcess.RunCommandAsync(args, new Dictionary<string, string> { [ComputeBackend.LibTorchVariable] = broken });

        foreach (var (code, output, error) in new[] { fresh, withoutLibTorch })
        {
            Assert.True(code == 2, error);
            Assert.Equal("", output);
            string line = Assert.Single(error.TrimEnd('\n').Split('\n'));
            Assert.Equal("train: --epochs must be a number above 0; got 'many'. See 'train --help'.", line);
        }
        Assert.False(File.Exists(Path.Combine(_folder, "a.zip")));
    }

    [Fact]
    public async Task Log_lines_go_to_stderr_and_stdout_is_the_commands_own_output()
    {
        // A fresh process, so that the compute backend is chosen (and its line written) by this command.
        string gguf = Path.Combine(_folder, "out", "tiny.gguf");
        var (code, output, error) = await WebAppProcess.RunCommandAsync(["export-gguf", "--model", ModelFixtures.Folder("qwen2"), "--out", gguf, "--type", "f16"]);

        Assert.True(code == 0, error);
        Assert.True(File.Exists(gguf));
        Assert.Contains(error.TrimEnd('\n').Split('\n'), line => line.StartsWith("Compute backend: ", StringComparison.Ordinal));
        string[] lines = output.TrimEnd('\n').Split('\n');
        Assert.Equal(3, lines.Length);
        Assert.StartsWith($"wrote {gguf} (", lines[0]);
        Assert.StartsWith("wrote ", lines[1]);
        Assert.Contains("ollama create", lines[2]);
    }

    /// <summary>Qwen/Qwen2-tiny in a Hugging Face cache, laid out as Python's huggingface_hub leaves it (the qwen2 fixture).</summary>
    private string CacheWithHubModel()
    {
        string cache = Path.Combine(_folder, "hf-cache");
        string fixture = ModelFixtures.Folder("qwen2");
        PythonHubCache.Add(cache, "Qwen/Qwen2-tiny", "9f3c1e2d4b5a69788796a5b4c3d2e1f0a9b8c7d6",
            PythonHubCache.FilesOf(fixture, "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"),
            missing: ["model.safetensors.index.json", "chat_template.jinja"]);
        return cache;
    }

    private static HubOptions Hub(string cache, bool offline) => new()
    {
        // An endpoint that refuses every connection: only the cache can answer.
        Endpoint = "http://127.0.0.1:9", Token = null, CacheFolder = cache, Offline = offline, Retries = 0, RetryDelay = TimeSpan.Zero,
    };

    [Fact]
    public async Task A_hub_id_is_answered_from_the_cache_offline_as_its_folder_would_be()
    {
        _ = ComputeBackend.Current;
        string cache = CacheWithHubModel();
        string[] ask = ["--prompt", "可以退貨嗎？", "--greedy", "--max-new-tokens", "6"];

        var fromFolder = await Run(["generate", "--model", ModelFixtures.Folder("qwen2"), .. ask]);
        var offline = await Run(Hub(cache, offline: true), ["generate", "--model", "Qwen/Qwen2-tiny", .. ask]);
        Assert.True(offline.Code == 0, offline.Err);
        Assert.Equal("", offline.Err);
        Assert.NotEmpty(offline.Out);
        Assert.Equal(fromFolder.Out, offline.Out);

        // Online but unreachable: the cached copy, and the engine's warning about it on the console (stderr: stdout is the answer).
        var unreachable = await Run(Hub(cache, offline: false), ["generate", "--model", "Qwen/Qwen2-tiny", .. ask]);
        Assert.True(unreachable.Code == 0, unreachable.Err);
        Assert.Equal(fromFolder.Out, unreachable.Out);
        string warning = Assert.Single(unreachable.Err.TrimEnd('\n').Split('\n'));
        Assert.StartsWith("warning: The Hub is unreachable; using the cached copy of Qwen/Qwen2-tiny", warning);

        // Not in the cache, offline: one line saying so, exit 1.
        var missing = await Run(Hub(cache, offline: true), ["export-gguf", "--model", "Qwen/Qwen2-huge", "--out", Path.Combine(_folder, "x.gguf"), "--type", "f16"]);
        Assert.Equal(1, missing.Code);
        Assert.Contains("HF_HUB_OFFLINE", Assert.Single(missing.Err.TrimEnd('\n').Split('\n')));
    }

    [Fact]
    [Trait(Category.Name, Category.Slow)]
    public async Task Train_takes_a_hub_id_offline_and_records_it_as_the_base_model()
    {
        _ = ComputeBackend.Current;
        string cache = CacheWithHubModel();
        string zip = Path.Combine(_folder, "out", "adapter.zip");
        var run = await Run(Hub(cache, offline: true), "train", "--model", "Qwen/Qwen2-tiny", "--data", TestPaths.InRepo("samples", "tutorial-qa.csv"),
            "--output", zip, "--epochs", "1", "--max-length", "128", "--validation", "0");
        Assert.True(run.Code == 0, run.Err);
        Assert.Contains("step ", run.Out);
        var config = JsonNode.Parse(File.ReadAllText(Path.Combine(TrainCommand.AdapterFolder(zip), "adapter_config.json")))!;
        Assert.Equal("Qwen/Qwen2-tiny", (string?)config["base_model_name_or_path"]);
        Assert.True(File.Exists(zip));
    }
}
