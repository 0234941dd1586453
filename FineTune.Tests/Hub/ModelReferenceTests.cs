using FineTune.Engine.Hub;

namespace FineTune.Tests.Hub;

/// <summary>One rule for what a model reference names (a folder or a Hub id), for the wizard, the CLI and the downloader.</summary>
public sealed class ModelReferenceTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("finetune-reference-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Theory]
    [InlineData("Qwen/Qwen2.5-0.5B-Instruct", true)]
    [InlineData("meta-llama/Llama-3.1-8B-Instruct", true)]
    [InlineData("a/b", true)]
    [InlineData("Qwen2.5-0.5B", false)]
    [InlineData("../etc/passwd", false)]
    [InlineData("a/../b", false)]
    [InlineData("https://huggingface.co/Qwen/Qwen2.5", false)]
    [InlineData("Qwen/模型", false)] // the Hub allows ASCII letters only; the downloader's old \w pattern let this through
    [InlineData(".hidden/model", false)]
    [InlineData("", false)]
    [InlineData(null, false)]
    public void Hub_ids_are_checked(string? id, bool valid) => Assert.Equal(valid, ModelReference.IsHubId(id));

    [Fact]
    public void Hub_ids_are_at_most_96_characters()
    {
        Assert.True(ModelReference.IsHubId("o/" + new string('m', 94)));
        Assert.False(ModelReference.IsHubId("o/" + new string('m', 95)));
    }

    [Fact]
    public void A_folder_with_config_json_is_a_model_folder_and_one_without_is_refused()
    {
        File.WriteAllText(Path.Combine(_folder, "config.json"), "{}");
        string empty = Directory.CreateDirectory(Path.Combine(_folder, "empty")).FullName;

        Assert.True(ModelReference.IsFolder(_folder));
        Assert.Null(ModelReference.Problem(_folder));
        Assert.True(ModelReference.IsFolder(empty));
        Assert.Equal($"'{empty}' has no config.json; it is not a Hugging Face model folder.", ModelReference.Problem(empty));
    }

    [Fact]
    public void A_model_folder_is_a_directory_holding_a_config_json_file()
    {
        File.WriteAllText(Path.Combine(_folder, "config.json"), "{}");
        string empty = Directory.CreateDirectory(Path.Combine(_folder, "empty")).FullName;
        string configIsAFolder = Directory.CreateDirectory(Path.Combine(_folder, "odd", "config.json")).Parent!.FullName;

        Assert.True(ModelReference.IsModelFolder(_folder));
        Assert.False(ModelReference.IsModelFolder(empty));
        Assert.False(ModelReference.IsModelFolder(configIsAFolder));
        Assert.False(ModelReference.IsModelFolder(Path.Combine(_folder, "config.json"))); // the file itself
        Assert.False(ModelReference.IsModelFolder(Path.Combine(_folder, "no-such-model")));
        Assert.False(ModelReference.IsModelFolder("")); // not the current directory's config.json
        Assert.False(ModelReference.IsModelFolder("Qwen/Qwen2.5-0.5B-Instruct"));
    }

    [Fact]
    public void Anything_else_must_be_a_hub_id()
    {
        Assert.False(ModelReference.IsFolder("Qwen/Qwen2.5-0.5B-Instruct"));
        Assert.Null(ModelReference.Problem("Qwen/Qwen2.5-0.5B-Instruct"));
        string missing = Path.Combine(_folder, "no-such-model");
        Assert.Equal($"'{missing}' is not a folder, nor a Hub id such as Qwen/Qwen2.5-0.5B-Instruct.", ModelReference.Problem(missing));
    }

    [Fact]
    public async Task The_downloader_resolves_a_folder_as_it_is_and_refuses_one_without_config_json_before_any_request()
    {
        File.WriteAllText(Path.Combine(_folder, "config.json"), "{}");
        string empty = Directory.CreateDirectory(Path.Combine(_folder, "empty")).FullName;
        await using var hub = await FakeHub.StartAsync();
        using var http = new HttpClient();
        var downloader = new HubDownloader(http, new HubOptions { Endpoint = hub.Endpoint, CacheFolder = Path.Combine(_folder, "cache"), Retries = 0 });

        Assert.Equal(_folder, await downloader.ResolveModelFolderAsync(_folder));
        var e = await Assert.ThrowsAsync<ArgumentException>(() => downloader.ResolveModelFolderAsync(empty));
        Assert.Contains("has no config.json", e.Message);
        await Assert.ThrowsAsync<ArgumentException>(() => downloader.ResolveModelFolderAsync("Qwen/模型"));
        Assert.Empty(hub.Requests);
    }
}
