using FineTune.Engine.Hub;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Models;
using Microsoft.Extensions.Logging.Abstractions;

namespace FineTune.Tests.Hub;

public sealed class ModelDownloadServiceTests : IDisposable
{
    private readonly string _cache = Directory.CreateTempSubdirectory("finetune-download-").FullName;
    private readonly HttpClient _http = new();

    public void Dispose()
    {
        _http.Dispose();
        try { Directory.Delete(_cache, recursive: true); } catch (IOException) { }
    }

    private ModelDownloadService Service(FakeHub hub) => new(new SingleClientFactory(_http),
        new HubOptions { Endpoint = hub.Endpoint, Token = null, Offline = false, CacheFolder = _cache, Retries = 0, RetryDelay = TimeSpan.Zero, ProgressInterval = TimeSpan.Zero },
        NullLogger<ModelDownloadService>.Instance, NullLoggerFactory.Instance);

    private static void AddModel(FakeHub hub)
    {
        hub.AddText("config.json", "{\"model_type\":\"qwen2\"}");
        hub.AddText("tokenizer.json", "{}");
        hub.AddFile("model.safetensors", 400_000);
    }

    [Fact]
    public async Task The_model_step_s_config_fetch_brings_config_json_alone_and_says_when_it_is_there()
    {
        _ = FineTune.Engine.Backend.ComputeBackend.Current;
        string fixture = FineTune.Tests.Models.ModelFixtures.Folder("llama3");
        await using var hub = await FakeHub.StartAsync(h =>
        {
            h.Files["config.json"] = File.ReadAllBytes(Path.Combine(fixture, "config.json"));
            h.AddText("tokenizer.json", "{}");
            h.AddFile("model.safetensors", 400_000);
        });
        var service = Service(hub);
        var changed = new TaskCompletionSource<string>(TaskCreationOptions.RunContinuationsAsynchronously);
        service.Changed += id => changed.TrySetResult(id);
        var settings = new FineTune.Web.Features.Settings.TrainingSettings { Source = FineTune.Web.Features.Settings.ModelSource.Hub, Model = hub.ModelId };
        var cache = new HubOptions { CacheFolder = _cache, Offline = true };

        Assert.Null(ModelCatalog.FactsOf(settings, cache));
        await service.FetchConfig(hub.ModelId);
        await service.FetchConfig(hub.ModelId); // once per id

        Assert.Equal(hub.ModelId, await changed.Task.WaitAsync(TimeSpan.FromSeconds(20)));
        Assert.Equal(1, hub.CountRequests("config.json"));
        Assert.Equal(0, hub.CountRequests("model.safetensors"));
        Assert.Null(service.Get(hub.ModelId)); // not a model download: the page offers that separately
        var facts = ModelCatalog.FactsOf(settings, cache)!;
        Assert.Equal(FineTune.Engine.Models.ModelFacts.Of(fixture).TotalParameters, facts.TotalParameters);
    }

    [Fact]
    public async Task A_hub_id_is_downloaded_even_where_the_server_has_a_folder_of_that_name()
    {
        // The wizard's source is explicit: a Hub id must not reach a folder outside the allowed local roots.
        string owner = $"shadow-{Guid.NewGuid():N}";
        await using var hub = await FakeHub.StartAsync(h => { AddModel(h); h.ModelId = $"{owner}/model"; });
        string shadow = Directory.CreateDirectory(hub.ModelId).FullName; // relative: beside the server's working directory
        File.WriteAllText(Path.Combine(shadow, "config.json"), "{}");
        try
        {
            string folder = await Service(hub).ResolveAsync(hub.ModelId, CancellationToken.None);

            Assert.StartsWith(_cache, folder);
            Assert.Equal(1, hub.CountRequests("model.safetensors"));
        }
        finally
        {
            Directory.Delete(Path.GetFullPath(owner), recursive: true);
        }
    }

    [Fact]
    public async Task Progress_arrives_while_running_and_training_reuses_the_finished_folder()
    {
        var release = new TaskCompletionSource();
        await using var hub = await FakeHub.StartAsync(h => { AddModel(h); h.Hold = release.Task; h.HoldFile = "model.safetensors"; });
        var service = Service(hub);
        var seen = new List<ModelDownloadState>();
        service.Changed += id => { lock (seen) seen.Add(service.Get(id)!); };

        Assert.Null(service.Get(hub.ModelId));
        Assert.Equal(ModelDownloadStatus.Running, service.Start(hub.ModelId).Status);
        // Half of model.safetensors has arrived and the Hub holds the rest: the state is Running with partial bytes.
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (service.Get(hub.ModelId)!.Progress is not { File: "model.safetensors", FileBytes: >= 200_000 })
        {
            Assert.True(DateTime.UtcNow < deadline, "no progress for model.safetensors arrived");
            await Task.Delay(20);
        }
        var running = service.Get(hub.ModelId)!;
        Assert.Equal(ModelDownloadStatus.Running, running.Status);
        long total = hub.Files.Values.Sum(b => (long)b.Length);
        Assert.Equal(total, running.Progress!.TotalBytes);
        Assert.InRange(running.Progress.Bytes, 1, total - 1);
        Assert.Same(running, service.Start(hub.ModelId)); // a second start joins the running download

        release.SetResult();
        string folder = await service.ResolveAsync(hub.ModelId, CancellationToken.None);

        Assert.Equal(Path.Combine(_cache, "models--tiny-org--tiny-model", "snapshots", hub.Commit), folder);
        Assert.Equal(hub.Files["model.safetensors"], File.ReadAllBytes(Path.Combine(folder, "model.safetensors")));
        var done = service.Get(hub.ModelId)!;
        Assert.Equal(ModelDownloadStatus.Done, done.Status);
        Assert.Equal(folder, done.Folder);
        lock (seen)
        {
            Assert.True(seen.Count(s => s.Status == ModelDownloadStatus.Running && s.Progress is not null) >= 3);
            Assert.Equal(ModelDownloadStatus.Done, seen[^1].Status);
        }

        // Training asks again: the finished folder comes back without a single new request to the Hub.
        int requests = hub.Requests.Count;
        Assert.Equal(folder, await service.ResolveAsync(hub.ModelId, CancellationToken.None));
        Assert.Equal(requests, hub.Requests.Count);
    }

    [Fact]
    public async Task A_gated_model_fails_with_access_denied_and_cancel_stops_a_running_download()
    {
        await using var gated = await FakeHub.StartAsync(h => { AddModel(h); h.RequiredToken = "secret"; });
        var service = Service(gated);
        service.Start(gated.ModelId);
        await Assert.ThrowsAsync<HubAccessDeniedException>(() => service.ResolveAsync(gated.ModelId, CancellationToken.None));
        var failed = service.Get(gated.ModelId)!;
        Assert.Equal(ModelDownloadStatus.Failed, failed.Status);
        Assert.Equal(ModelDownloadError.AccessDenied, failed.Error);
        Assert.Contains("HF_TOKEN", failed.Message);

        var never = new TaskCompletionSource();
        await using var slow = await FakeHub.StartAsync(h => { AddModel(h); h.Hold = never.Task; h.HoldFile = "model.safetensors"; });
        var second = Service(slow);
        second.Start(slow.ModelId);
        var deadline = DateTime.UtcNow.AddSeconds(20);
        while (second.Get(slow.ModelId)!.Progress is not { File: "model.safetensors" })
        {
            Assert.True(DateTime.UtcNow < deadline, "the download never reached model.safetensors");
            await Task.Delay(20);
        }
        second.Cancel(slow.ModelId);
        while (second.Get(slow.ModelId)!.Status == ModelDownloadStatus.Running)
        {
            Assert.True(DateTime.UtcNow < deadline, "cancel did not stop the download");
            await Task.Delay(20);
        }
        Assert.Equal(ModelDownloadStatus.Canceled, second.Get(slow.ModelId)!.Status);
    }
}
