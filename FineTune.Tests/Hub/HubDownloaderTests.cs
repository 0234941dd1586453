using FineTune.Engine.Hub;

namespace FineTune.Tests.Hub;

public sealed class HubDownloaderTests : IDisposable
{
    private readonly string _cache = Directory.CreateTempSubdirectory("finetune-hub-").FullName;
    private readonly HttpClient _http = new();

    public void Dispose()
    {
        _http.Dispose();
        try { Directory.Delete(_cache, recursive: true); } catch (IOException) { }
    }

    private HubDownloader Downloader(FakeHub hub, string? token = null, int retries = 3) =>
        new(_http, new HubOptions { Endpoint = hub.Endpoint, Token = token, CacheFolder = _cache, Retries = retries, RetryDelay = TimeSpan.Zero, ProgressInterval = TimeSpan.Zero });

    private static void AddModel(FakeHub hub)
    {
        hub.AddText("config.json", "{\"model_type\":\"qwen2\"}");
        hub.AddText("tokenizer.json", "{}");
        hub.AddText("README.md", "not needed");
        hub.AddFile("model.safetensors", 300_000);
    }

    /// <summary>Collects reports synchronously (Progress&lt;T&gt; would post them later on the thread pool).</summary>
    private sealed class Recorder : IProgress<DownloadProgress>
    {
        public List<DownloadProgress> Reports { get; } = [];
        public void Report(DownloadProgress value) { lock (Reports) Reports.Add(value); }
    }

    private static long ResumeOffset(FakeHub hub, string file)
    {
        string request = Assert.Single(hub.Requests, r => r.Contains($"/{file} range=bytes=", StringComparison.Ordinal));
        string range = request.Split("range=bytes=")[1];
        return long.Parse(range[..range.IndexOf('-')]);
    }

    [Fact]
    public async Task Downloads_only_the_needed_files_with_progress()
    {
        await using var hub = await FakeHub.StartAsync(AddModel);
        var progress = new Recorder();

        string folder = await Downloader(hub).DownloadAsync(hub.ModelId, progress);

        Assert.Equal(Path.Combine(_cache, "models--tiny-org--tiny-model", "snapshots", hub.Commit), folder);
        foreach (string name in new[] { "config.json", "tokenizer.json", "model.safetensors" })
            Assert.Equal(hub.Files[name], File.ReadAllBytes(Path.Combine(folder, name)));
        Assert.False(File.Exists(Path.Combine(folder, "README.md")));
        Assert.Equal(0, hub.CountRequests("README.md") + hub.CountRequests("pytorch_model.bin") + hub.CountRequests("original/"));
        Assert.Empty(Directory.GetFiles(folder, "*.incomplete"));

        long total = hub.Files.Where(f => f.Key != "README.md").Sum(f => f.Value.Length);
        var last = progress.Reports[^1];
        Assert.Equal(total, last.TotalBytes);
        Assert.Equal(total, last.Bytes);
        Assert.Equal(1.0, last.Fraction);
        Assert.Equal(3, progress.Reports.Count(r => r.FileDone));
        Assert.True(progress.Reports.Select(r => r.Bytes).SequenceEqual(progress.Reports.Select(r => r.Bytes).Order()), "bytes never go back");
        Assert.Contains(progress.Reports, r => r.File == "model.safetensors" && r.FileBytes > 0 && r.FileBytes < r.FileTotal);
        Assert.All(progress.Reports, r => Assert.True(r.BytesPerSecond >= 0));
    }

    [Fact]
    public async Task Resumes_a_cut_connection_with_a_range_request_in_the_same_run()
    {
        await using var hub = await FakeHub.StartAsync(h => { AddModel(h); h.CutAfterBytes = 100_000; h.CutCount = 1; });

        string folder = await Downloader(hub, retries: 2).DownloadAsync(hub.ModelId);

        Assert.Equal(hub.Files["model.safetensors"], File.ReadAllBytes(Path.Combine(folder, "model.safetensors")));
        // The resume asks for the rest from where the cut left off (a reset may drop the last bytes in flight).
        long resumedFrom = ResumeOffset(hub, "model.safetensors");
        Assert.InRange(resumedFrom, 1, 100_000);
    }

    [Fact]
    public async Task Resumes_an_incomplete_file_left_by_an_earlier_run()
    {
        await using var hub = await FakeHub.StartAsync(h => { AddModel(h); h.CutAfterBytes = 120_000; h.CutCount = 1; });

        var broken = await Assert.ThrowsAsync<HubOfflineException>(() => Downloader(hub, retries: 0).DownloadAsync(hub.ModelId));
        Assert.Contains("model.safetensors", broken.Message);
        // As huggingface_hub keeps it: the blob being written, named by the file's sha256, with ".incomplete".
        string partial = Path.Combine(_cache, "models--tiny-org--tiny-model", "blobs",
            FakeHub.Etag("model.safetensors", hub.Files["model.safetensors"]) + ".incomplete");
        long kept = new FileInfo(partial).Length;
        Assert.InRange(kept, 1, 120_000);

        string folder = await Downloader(hub, retries: 0).DownloadAsync(hub.ModelId);

        Assert.Equal(hub.Files["model.safetensors"], File.ReadAllBytes(Path.Combine(folder, "model.safetensors")));
        Assert.Equal(kept, ResumeOffset(hub, "model.safetensors"));
        Assert.False(File.Exists(partial));
    }

    [Fact]
    public async Task Reuses_the_cache_and_works_offline_once_complete()
    {
        string folder;
        await using (var hub = await FakeHub.StartAsync(AddModel))
        {
            folder = await Downloader(hub).DownloadAsync(hub.ModelId);
            int fetches = hub.CountRequests("/resolve/");

            var progress = new Recorder();
            Assert.Equal(folder, await Downloader(hub).DownloadAsync(hub.ModelId, progress));
            Assert.Equal(fetches, hub.CountRequests("/resolve/"));

            // A snapshot entry lost while its blob is there is linked again, without a fetch.
            File.Delete(Path.Combine(folder, "config.json"));
            await Downloader(hub).DownloadAsync(hub.ModelId);
            Assert.Equal(fetches, hub.CountRequests("/resolve/"));
            Assert.Equal(hub.Files["config.json"], File.ReadAllBytes(Path.Combine(folder, "config.json")));

            // A file lost from the cache (entry and contents) is fetched again, and only that one.
            File.Delete(Path.Combine(folder, "config.json"));
            File.Delete(Path.Combine(_cache, "models--tiny-org--tiny-model", "blobs", FakeHub.Etag("config.json", hub.Files["config.json"])));
            await Downloader(hub).DownloadAsync(hub.ModelId);
            Assert.Equal(fetches + 1, hub.CountRequests("/resolve/"));
            Assert.Equal(hub.Files["config.json"], File.ReadAllBytes(Path.Combine(folder, "config.json")));
        }

        // The hub is gone now: the complete snapshot is used without the network.
        var offline = new HubDownloader(_http, new HubOptions { Endpoint = "http://127.0.0.1:9", CacheFolder = _cache });
        Assert.Equal(folder, await offline.DownloadAsync("tiny-org/tiny-model"));
    }

    [Fact]
    public async Task Offline_mode_uses_only_the_cache_and_local_folders_are_used_as_they_are()
    {
        var offline = new HubDownloader(_http, new HubOptions { Endpoint = "http://127.0.0.1:9", CacheFolder = _cache, Offline = true });
        var e = await Assert.ThrowsAsync<HubOfflineException>(() => offline.DownloadAsync("Qwen/Qwen2.5-0.5B-Instruct"));
        Assert.Contains("HF_HUB_OFFLINE", e.Message);

        string local = Directory.CreateDirectory(Path.Combine(_cache, "my-model")).FullName;
        File.WriteAllText(Path.Combine(local, "config.json"), "{}");
        Assert.Equal(local, await offline.ResolveModelFolderAsync(local));

        await using var hub = await FakeHub.StartAsync(AddModel);
        string folder = await Downloader(hub).DownloadAsync(hub.ModelId);
        var cachedOnly = new HubDownloader(_http, new HubOptions { Endpoint = hub.Endpoint, CacheFolder = _cache, Offline = true });
        int requests = hub.Requests.Count;
        Assert.Equal(folder, await cachedOnly.ResolveModelFolderAsync(hub.ModelId));
        Assert.Equal(requests, hub.Requests.Count);
    }

    [Fact]
    public async Task Two_downloads_of_one_model_at_once_fetch_each_file_once()
    {
        await using var hub = await FakeHub.StartAsync(AddModel);

        var folders = await Task.WhenAll(Downloader(hub).DownloadAsync(hub.ModelId), Downloader(hub).DownloadAsync(hub.ModelId));

        Assert.Equal(folders[0], folders[1]);
        Assert.Equal(3, hub.CountRequests("/resolve/"));
        Assert.Equal(hub.Files["model.safetensors"], File.ReadAllBytes(Path.Combine(folders[0], "model.safetensors")));
    }

    [Fact]
    public async Task No_connection_and_no_cache_says_so()
    {
        var offline = new HubDownloader(_http, new HubOptions { Endpoint = "http://127.0.0.1:9", CacheFolder = _cache });

        var e = await Assert.ThrowsAsync<HubOfflineException>(() => offline.DownloadAsync("Qwen/Qwen2.5-0.5B-Instruct"));

        Assert.Contains("Could not reach http://127.0.0.1:9", e.Message);
        Assert.Contains("connection", e.Message);
    }

    [Fact]
    public async Task Gated_model_without_token_asks_to_accept_the_licence_and_set_hf_token()
    {
        await using var hub = await FakeHub.StartAsync(h => { AddModel(h); h.RequiredToken = "hf_right"; });

        var e = await Assert.ThrowsAsync<HubAccessDeniedException>(() => Downloader(hub).DownloadAsync(hub.ModelId));

        Assert.Equal(401, e.StatusCode);
        Assert.Contains("accept the licence", e.Message);
        Assert.Contains("HF_TOKEN", e.Message);
        Assert.Contains($"{hub.Endpoint}/{hub.ModelId}", e.Message);
    }

    [Fact]
    public async Task Refused_token_gives_403_advice_and_the_right_token_downloads()
    {
        await using var hub = await FakeHub.StartAsync(h => { AddModel(h); h.RequiredToken = "hf_right"; });

        var e = await Assert.ThrowsAsync<HubAccessDeniedException>(() => Downloader(hub, token: "hf_wrong").DownloadAsync(hub.ModelId));
        Assert.Equal(403, e.StatusCode);
        Assert.Contains("HF_TOKEN", e.Message);

        string folder = await Downloader(hub, token: "hf_right").DownloadAsync(hub.ModelId);
        Assert.True(File.Exists(Path.Combine(folder, "model.safetensors")));
        Assert.Contains(hub.Requests, r => r.Contains("/resolve/") && r.EndsWith("auth=Bearer hf_right"));
    }

    [Fact]
    public async Task Unknown_model_is_not_found_with_or_without_token()
    {
        await using var hub = await FakeHub.StartAsync(AddModel);

        var anonymous = await Assert.ThrowsAsync<HubNotFoundException>(() => Downloader(hub).DownloadAsync("tiny-org/no-such-model"));
        var withToken = await Assert.ThrowsAsync<HubNotFoundException>(() => Downloader(hub, token: "hf_x").DownloadAsync("tiny-org/no-such-model"));

        Assert.Contains("There is no model 'tiny-org/no-such-model'", anonymous.Message);
        Assert.Contains("Check the spelling", withToken.Message);
        await Assert.ThrowsAsync<ArgumentException>(() => Downloader(hub).DownloadAsync("../etc/passwd"));
    }

    [Fact]
    public async Task Model_without_safetensors_is_refused_before_downloading()
    {
        await using var hub = await FakeHub.StartAsync(h => h.AddText("config.json", "{}"));

        var e = await Assert.ThrowsAsync<HubUnsupportedModelException>(() => Downloader(hub).DownloadAsync(hub.ModelId));

        Assert.Contains(".safetensors", e.Message);
        Assert.Equal(0, hub.CountRequests("/resolve/"));
    }

    [Fact]
    public async Task Too_little_disk_space_is_refused_before_downloading()
    {
        await using var hub = await FakeHub.StartAsync(h => { AddModel(h); h.ListedOnly["model-00002-of-00002.safetensors"] = 1L << 60; });

        var e = await Assert.ThrowsAsync<HubDiskFullException>(() => Downloader(hub).DownloadAsync(hub.ModelId));

        Assert.Contains("free", e.Message);
        Assert.Equal(0, hub.CountRequests("/resolve/"));
    }

    [Fact]
    public void Recognises_no_space_left_on_device()
    {
        Assert.True(HubDownloader.IsDiskFull(new IOException("No space left on device : '/x'", 28)));
        Assert.False(HubDownloader.IsDiskFull(new IOException("Broken pipe", 32)));
    }

    [Theory]
    [InlineData("model-00001-of-00004.safetensors", true)]
    [InlineData("model.safetensors.index.json", true)]
    [InlineData("qwen.tiktoken", true)]
    [InlineData("chat_template.jinja", true)]
    [InlineData("generation_config.json", true)]
    [InlineData("pytorch_model.bin", false)]
    [InlineData("onnx/model.safetensors", false)]
    [InlineData("README.md", false)]
    public void Picks_the_files_a_model_folder_needs(string path, bool wanted) =>
        Assert.Equal(wanted, HubDownloader.IsWanted(path));
}
