using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Models;
using FineTune.Engine.Training;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Features.Runs;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.Engine;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using FineTune.Web.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using static TorchSharp.torch;

namespace FineTune.Tests.Web.Features.Download;

/// <summary>The download step's GGUF export of a finished run (qwen2 fixture, real adapter): files, Modelfile, what is served.</summary>
[Trait(Category.Name, Category.Slow)]
public sealed class GgufDownloadsTests : IDisposable
{
    private readonly RunTestServices _services = new();
    private readonly ServiceProvider _http = new ServiceCollection().AddLogging().AddHttpClient().BuildServiceProvider();

    public void Dispose()
    {
        _http.Dispose();
        _services.Dispose();
    }

    [Fact]
    public async Task A_finished_run_exports_gguf_and_a_modelfile_with_its_tutorial_template_and_the_test_sampling()
    {
        string fixture = TestFiles.Fixture("models/qwen2");
        var run = await _services.Store.CreateAsync(new TrainingSettings { Source = ModelSource.Local, Model = fixture }, RunStoreTests.Rows, "faq.xlsx", null);
        var packager = new ArtifactPackager(_services.Store);
        WriteAdapter(fixture, packager.AdapterDirectory(run.Id));
        await _services.Store.SetStatusAsync(run.Id, RunStatus.Completed);
        var folders = new LocalModelFolders(new DataPaths(_services.Paths.Root, [TestFiles.Fixture("models")]));
        var downloads = new ModelDownloadService(_http.GetRequiredService<IHttpClientFactory>(), new FineTune.Engine.Hub.HubOptions(),
            NullLogger<ModelDownloadService>.Instance, NullLoggerFactory.Instance);
        var models = new EngineModels(ComputeBackend.Initialize(), folders, downloads, NullLoggerFactory.Instance);
        var gguf = new GgufDownloads(packager, _services.Store);
        var exporter = new EngineGgufExporter(models, _services.Store, gguf, NullLoggerFactory.Instance);

        Assert.False(gguf.Has(run.Id, "q8_0"));
        string hint = await exporter.ExportAsync(run.Id, "q8_0", 0.3, 0.85, CancellationToken.None);

        Assert.True(gguf.Has(run.Id, "q8_0"));
        Assert.Equal($"ollama create finetune-run{run.Id}-q8_0 -f finetune-run{run.Id}-q8_0.Modelfile", hint);
        string modelfile = File.ReadAllText(gguf.Served(run.Id, GgufDownloads.ModelfileName(run.Id, "q8_0"))!);
        Assert.Contains($"FROM ./finetune-run{run.Id}-q8_0.gguf", modelfile);
        Assert.Contains("TEMPLATE \"\"\"### 指令：\n{{ .Prompt }}\n\n### 回應：\n{{ .Response }}<|im_end|>\"\"\"", modelfile); // tutorial answers end with EOS
        Assert.Contains("PARAMETER temperature 0.3\n", modelfile);
        Assert.Contains("PARAMETER top_p 0.85\n", modelfile);
        Assert.NotNull(gguf.Served(run.Id, GgufDownloads.FileName(run.Id, "q8_0")));
        Assert.Null(gguf.Served(run.Id, "../../runs.db"));
        Assert.Null(gguf.Served(run.Id, GgufDownloads.FileName(run.Id, "q4_0"))); // not exported
        await Assert.ThrowsAsync<ArgumentException>(() => exporter.ExportAsync(run.Id, "q5_k", 1, 1, CancellationToken.None));
    }

    private static void WriteAdapter(string modelFolder, string adapterFolder)
    {
        using var model = ModelLoader.Load(modelFolder, new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        var linears = new CausalLmTraining(model).NamedLinears().ToArray();
        var lora = new LoraSettings(4, 8, 0);
        LoraInjector.Attach(linears, lora, seed: 3);
        PeftAdapter.Save(adapterFolder, linears, lora, modelFolder);
    }
}
