using FineTune.Engine.Tokenization;
using FineTune.Tests.Web.Features.Runs;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.OpenAi;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;

namespace FineTune.Tests.Web.Features.OpenAi;

/// <summary>GET /v1/models' list: each finished run with its adapter, then each base model once, served with a run's settings.</summary>
public sealed class OpenAiModelsTests : IDisposable
{
    private readonly RunTestServices _services = new();

    public void Dispose() => _services.Dispose();

    private async Task<int> RunAsync(TrainingSettings settings, RunStatus status, bool adapter = true)
    {
        var run = await _services.Store.CreateAsync(settings, RunStoreTests.Rows, "faq.xlsx", null);
        if (adapter)
        {
            string folder = Directory.CreateDirectory(new ArtifactPackager(_services.Store).AdapterDirectory(run.Id)).FullName;
            File.WriteAllText(Path.Combine(folder, "adapter_config.json"), "{}");
        }
        await _services.Store.SetStatusAsync(run.Id, status);
        return run.Id;
    }

    [Fact]
    public async Task Finished_runs_and_their_base_models_are_served_with_the_runs_settings()
    {
        var hub = new TrainingSettings { Source = ModelSource.Hub, Model = "Qwen/Qwen2.5-0.5B-Instruct", PromptTemplate = PromptStyle.ModelChatTemplate };
        var local = new TrainingSettings { Source = ModelSource.Local, Model = "/models/qwen2", Quantization = Quantization.None };
        int first = await RunAsync(hub, RunStatus.Completed);
        int second = await RunAsync(hub, RunStatus.Completed);
        int other = await RunAsync(local, RunStatus.Completed);
        await RunAsync(hub, RunStatus.Failed);
        await RunAsync(local, RunStatus.Completed, adapter: false);
        var packager = new ArtifactPackager(_services.Store);

        var served = await new OpenAiModels(_services.Store, packager).ListAsync(CancellationToken.None);

        Assert.Equal([OpenAiModels.RunModelId(first), OpenAiModels.RunModelId(second), OpenAiModels.RunModelId(other), "Qwen/Qwen2.5-0.5B-Instruct", "/models/qwen2"],
            served.Select(m => m.Id));
        Assert.Equal([packager.AdapterDirectory(first), packager.AdapterDirectory(second), packager.AdapterDirectory(other), null, null], served.Select(m => m.AdapterDirectory));
        Assert.Equal([hub.ToJson(), hub.ToJson(), local.ToJson(), hub.ToJson(), local.ToJson()], served.Select(m => m.Settings.ToJson()));
        var runs = await _services.Store.ListAsync();
        DateTime Ended(int id) => runs.Single(r => r.Id == id).EndedAt!.Value;
        Assert.Equal(Ended(first), served[3].Created); // a base model dates from its first finished run
        Assert.Equal(Ended(other), served[4].Created);
    }
}
