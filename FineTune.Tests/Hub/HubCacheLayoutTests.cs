using FineTune.Engine.Backend;
using FineTune.Engine.Hub;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Models;
using static TorchSharp.torch;

namespace FineTune.Tests.Hub;

/// <summary>
/// The download cache is Python huggingface_hub's: what either downloads, the other finds (layout in
/// <see cref="HubDownloader"/>; huggingface_hub's side written by <see cref="PythonHubCache"/>).
/// </summary>
public sealed class HubCacheLayoutTests : IDisposable
{
    private readonly string _cache = Directory.CreateTempSubdirectory("finetune-hfcache-").FullName;
    private readonly HttpClient _http = new();

    public void Dispose()
    {
        _http.Dispose();
        try { Directory.Delete(_cache, recursive: true); } catch (IOException) { }
    }

    private HubDownloader Downloader(string endpoint, bool offline = false) =>
        new(_http, new HubOptions { Endpoint = endpoint, Token = null, CacheFolder = _cache, Offline = offline, Retries = 0, RetryDelay = TimeSpan.Zero, ProgressInterval = TimeSpan.Zero });

    private static void AddModel(FakeHub hub)
    {
        hub.AddText("config.json", "{\"model_type\":\"qwen2\"}");
        hub.AddText("tokenizer.json", "{}");
        hub.AddFile("model.safetensors", 50_000);
    }

    [Fact]
    public async Task Downloads_into_the_layout_huggingface_hub_reads()
    {
        await using var hub = await FakeHub.StartAsync(h => { AddModel(h); h.Commit = "a1b2c3d4e5f60718293a4b5c6d7e8f9012345678"; });

        string snapshot = await Downloader(hub.Endpoint).DownloadAsync(hub.ModelId);

        string repository = Path.Combine(_cache, "models--tiny-org--tiny-model");
        Assert.Equal(Path.Combine(repository, "snapshots", hub.Commit), snapshot);
        Assert.Equal(hub.Commit, File.ReadAllText(Path.Combine(repository, "refs", "main"))); // no newline, as Python writes it
        foreach (string name in new[] { "config.json", "tokenizer.json", "model.safetensors" })
        {
            string etag = FakeHub.Etag(name, hub.Files[name]);
            var entry = new FileInfo(Path.Combine(snapshot, name));
            Assert.Equal(Path.Combine("..", "..", "blobs", etag), entry.LinkTarget); // relative, so the cache can move
            Assert.Equal(hub.Files[name], File.ReadAllBytes(Path.Combine(repository, "blobs", etag)));
            Assert.Equal(hub.Files[name], File.ReadAllBytes(entry.FullName));
        }
        // sha256 for LFS files, git blob ids for the rest: the names Python gives them, so it finds them.
        Assert.Equal(64, FakeHub.Etag("model.safetensors", hub.Files["model.safetensors"]).Length);
        Assert.Equal(40, FakeHub.Etag("config.json", hub.Files["config.json"]).Length);
        Assert.Equal(3, Directory.GetFiles(Path.Combine(repository, "blobs")).Length);
        // The optional files this commit lacks are recorded where huggingface_hub records them.
        Assert.True(File.Exists(Path.Combine(repository, ".no_exist", hub.Commit, "generation_config.json")));
        Assert.False(File.Exists(Path.Combine(repository, ".no_exist", hub.Commit, "config.json")));
        // Nothing of ours inside the repository folder: locks live in <cache>/.locks as Python's do.
        Assert.Equal(new[] { ".no_exist", "blobs", "refs", "snapshots" },
            Directory.GetFileSystemEntries(repository).Select(Path.GetFileName).Order(StringComparer.Ordinal));
        Assert.True(Directory.Exists(Path.Combine(_cache, ".locks", "models--tiny-org--tiny-model")));
    }

    [Fact]
    public async Task Loads_offline_a_model_that_huggingface_hub_cached()
    {
        _ = ComputeBackend.Current;
        string fixture = ModelFixtures.Folder("qwen2");
        const string commit = "9f3c1e2d4b5a69788796a5b4c3d2e1f0a9b8c7d6";
        string written = PythonHubCache.Add(_cache, "Qwen/Qwen2-tiny", commit,
            PythonHubCache.FilesOf(fixture, "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "model.safetensors"),
            missing: ["model.safetensors.index.json", "chat_template.jinja"]);

        // HF_HUB_OFFLINE=1, and an endpoint that would refuse every connection: only the cache can answer.
        string folder = await Downloader("http://127.0.0.1:9", offline: true).ResolveModelFolderAsync("Qwen/Qwen2-tiny");

        Assert.Equal(written, folder);
        var golden = ModelFixtures.LoadGolden("qwen2").Logits[0];
        Assert.Equal(TokenizerLoader.Load(fixture).Encode(golden.Text), TokenizerLoader.Load(folder).Encode(golden.Text));
        using var model = ModelLoader.Load(folder, new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        var expected = SafeTensors.LoadAll(Path.Combine(fixture, "golden.safetensors"));
        try
        {
            using var scope = NewDisposeScope();
            using var _ = no_grad();
            var logits = model.Logits(tensor(golden.InputIds.Select(i => (long)i).ToArray(), [1, golden.InputIds.Length]))[0]; // (T, V)
            double diff = (logits - expected[golden.Tensor]).abs().max().item<float>();
            Assert.True(diff <= 1e-4, $"logits from the cached snapshot differ from transformers' by {diff:G3}");
        }
        finally
        {
            foreach (var t in expected.Values) t.Dispose();
        }
    }

    [Fact]
    public async Task Offline_a_snapshot_python_left_without_weights_is_not_used_and_online_it_is_completed()
    {
        await using var hub = await FakeHub.StartAsync(AddModel);
        // Python asked only for config.json (AutoConfig): the snapshot exists but cannot be trained from.
        PythonHubCache.Add(_cache, hub.ModelId, hub.Commit, new Dictionary<string, byte[]> { ["config.json"] = hub.Files["config.json"] });

        var e = await Assert.ThrowsAsync<HubOfflineException>(() => Downloader(hub.Endpoint, offline: true).DownloadAsync(hub.ModelId));
        Assert.Contains("HF_HUB_OFFLINE", e.Message);

        string snapshot = await Downloader(hub.Endpoint).DownloadAsync(hub.ModelId);

        Assert.Equal(0, hub.CountRequests("/config.json")); // Python's blob is used as it is
        Assert.Equal(1, hub.CountRequests("/model.safetensors"));
        Assert.Equal(hub.Files["model.safetensors"], File.ReadAllBytes(Path.Combine(snapshot, "model.safetensors")));
        Assert.Equal(snapshot, await Downloader(hub.Endpoint, offline: true).DownloadAsync(hub.ModelId));
    }

    [Fact]
    public async Task A_new_commit_downloads_only_what_changed_and_links_the_rest()
    {
        await using var hub = await FakeHub.StartAsync(AddModel);
        string first = await Downloader(hub.Endpoint).DownloadAsync(hub.ModelId);

        hub.Commit = "fedcba9876543210";
        hub.AddText("config.json", "{\"model_type\":\"qwen2\",\"changed\":true}");
        string second = await Downloader(hub.Endpoint).DownloadAsync(hub.ModelId);

        Assert.NotEqual(first, second);
        Assert.Equal(1, hub.CountRequests("/model.safetensors")); // the weights blob is shared by both snapshots
        Assert.Equal(2, hub.CountRequests("/config.json"));
        Assert.Equal(new FileInfo(Path.Combine(first, "model.safetensors")).LinkTarget, new FileInfo(Path.Combine(second, "model.safetensors")).LinkTarget);
        Assert.Equal(hub.Commit, File.ReadAllText(Path.Combine(_cache, "models--tiny-org--tiny-model", "refs", "main")));
        Assert.Equal(hub.Files["config.json"], File.ReadAllBytes(Path.Combine(second, "config.json")));
        Assert.NotEqual(hub.Files["config.json"], File.ReadAllBytes(Path.Combine(first, "config.json")));
    }

    [Fact]
    public async Task A_listing_without_blob_ids_keeps_the_files_in_the_snapshot()
    {
        await using var hub = await FakeHub.StartAsync(h => { AddModel(h); h.WithoutBlobIds = true; });

        string snapshot = await Downloader(hub.Endpoint).DownloadAsync(hub.ModelId);

        Assert.Null(new FileInfo(Path.Combine(snapshot, "model.safetensors")).LinkTarget);
        Assert.Equal(hub.Files["model.safetensors"], File.ReadAllBytes(Path.Combine(snapshot, "model.safetensors")));
        Assert.Equal(snapshot, await Downloader(hub.Endpoint, offline: true).DownloadAsync(hub.ModelId));
    }

    [Fact]
    public async Task A_snapshot_entry_whose_blob_was_deleted_is_fetched_again()
    {
        await using var hub = await FakeHub.StartAsync(AddModel);
        string snapshot = await Downloader(hub.Endpoint).DownloadAsync(hub.ModelId);
        File.Delete(Path.Combine(_cache, "models--tiny-org--tiny-model", "blobs", FakeHub.Etag("model.safetensors", hub.Files["model.safetensors"])));

        Assert.Equal(snapshot, await Downloader(hub.Endpoint).DownloadAsync(hub.ModelId));

        Assert.Equal(2, hub.CountRequests("/model.safetensors"));
        Assert.Equal(hub.Files["model.safetensors"], File.ReadAllBytes(Path.Combine(snapshot, "model.safetensors")));
    }
}

/// <summary>Cache folder, token and offline flag found where huggingface_hub (constants.py) finds them.</summary>
public sealed class HubPathsTests : IDisposable
{
    private readonly string _home = Directory.CreateTempSubdirectory("finetune-hfhome-").FullName;

    public void Dispose()
    {
        try { Directory.Delete(_home, recursive: true); } catch (IOException) { }
    }

    private static HubPaths.Environment Env(params (string Name, string Value)[] vars) =>
        name => vars.FirstOrDefault(v => v.Name == name).Value;

    [Fact]
    public void Cache_folder_follows_hf_hub_cache_then_hf_home_then_xdg_then_home()
    {
        string user = Environment.GetFolderPath(Environment.SpecialFolder.UserProfile);
        Assert.Equal(Path.Combine(user, ".cache", "huggingface", "hub"), HubPaths.CacheFolder(Env()));
        Assert.Equal(Path.Combine("/x", "huggingface", "hub"), HubPaths.CacheFolder(Env(("XDG_CACHE_HOME", "/x"))));
        Assert.Equal(Path.Combine("/data/hf", "hub"), HubPaths.CacheFolder(Env(("XDG_CACHE_HOME", "/x"), ("HF_HOME", "/data/hf"))));
        Assert.Equal("/legacy", HubPaths.CacheFolder(Env(("HF_HOME", "/data/hf"), ("HUGGINGFACE_HUB_CACHE", "/legacy"))));
        Assert.Equal("/hub", HubPaths.CacheFolder(Env(("HF_HOME", "/data/hf"), ("HUGGINGFACE_HUB_CACHE", "/legacy"), ("HF_HUB_CACHE", "/hub"))));
        Assert.Equal(Path.Combine(user, "models"), HubPaths.CacheFolder(Env(("HF_HUB_CACHE", "~/models"))));
        Assert.Equal(Path.Combine(user, ".cache", "huggingface", "hub"), HubPaths.CacheFolder(Env(("HF_HUB_CACHE", ""))));
    }

    [Fact]
    public void Token_comes_from_hf_token_else_the_login_file()
    {
        Assert.Null(HubPaths.FindToken(Env(("HF_HOME", _home))));

        File.WriteAllText(Path.Combine(_home, "token"), "hf_from_login\n"); // as `hf auth login` saves it
        Assert.Equal("hf_from_login", HubPaths.FindToken(Env(("HF_HOME", _home))));
        Assert.Equal("hf_env", HubPaths.FindToken(Env(("HF_HOME", _home), ("HF_TOKEN", "hf_env"))));
        Assert.Equal("hf_legacy", HubPaths.FindToken(Env(("HF_HOME", _home), ("HUGGING_FACE_HUB_TOKEN", "hf_legacy"))));

        string elsewhere = Path.Combine(_home, "other-token");
        File.WriteAllText(elsewhere, "hf_token_path");
        Assert.Equal("hf_token_path", HubPaths.FindToken(Env(("HF_HOME", _home), ("HF_TOKEN_PATH", elsewhere))));
        File.WriteAllText(elsewhere, "  \n");
        Assert.Null(HubPaths.FindToken(Env(("HF_HOME", _home), ("HF_TOKEN_PATH", elsewhere))));
    }

    [Theory]
    [InlineData("1", true)]
    [InlineData("true", true)]
    [InlineData("ON", true)]
    [InlineData("yes", true)]
    [InlineData("0", false)]
    [InlineData("false", false)]
    [InlineData("", false)]
    [InlineData(null, false)]
    public void Offline_flag_reads_like_huggingface_hub(string? value, bool offline) =>
        Assert.Equal(offline, HubPaths.IsTrue("HF_HUB_OFFLINE", name => name == "HF_HUB_OFFLINE" ? value : null));
}
