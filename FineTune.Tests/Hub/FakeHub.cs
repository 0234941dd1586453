using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace FineTune.Tests.Hub;

/// <summary>
/// A Hugging Face Hub stand-in on 127.0.0.1 (Kestrel): the revision API with sizes and blob ids as the Hub gives them
/// with ?blobs=true (git blob id; LFS sha256 and size for *.safetensors) and resolve URLs with Range support and the
/// Hub's X-Repo-Commit/ETag headers, plus switches to demand a token, drop connections mid-file, and record every request.
/// </summary>
internal sealed class FakeHub : IAsyncDisposable
{
    private readonly WebApplication _app;

    public string ModelId { get; set; } = "tiny-org/tiny-model";
    public string Commit { get; set; } = "0123456789abcdef";
    public Dictionary<string, byte[]> Files { get; } = new(StringComparer.Ordinal);
    /// <summary>When set, requests need "Authorization: Bearer &lt;token&gt;" (a gated model).</summary>
    public string? RequiredToken { get; set; }
    /// <summary>A file download that would send more than this many bytes is cut off after them, CutCount times.</summary>
    public int CutAfterBytes { get; set; }
    public int CutCount { get; set; }
    /// <summary>Files the listing names (with these sizes) but resolve does not serve.</summary>
    public Dictionary<string, long> ListedOnly { get; } = new(StringComparer.Ordinal);
    public ConcurrentQueue<string> Requests { get; } = new();
    /// <summary>When set, a download of <see cref="HoldFile"/> sends its first half, then waits for this task (a slow link).</summary>
    public Task? Hold { get; set; }
    public string? HoldFile { get; set; }
    /// <summary>Lists files without blobId/lfs, as a mirror that does not serve them might.</summary>
    public bool WithoutBlobIds { get; set; }
    public string Endpoint { get; private set; } = "";

    private FakeHub(WebApplication app) => _app = app;

    public static async Task<FakeHub> StartAsync(Action<FakeHub>? configure = null)
    {
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.UseUrls("http://127.0.0.1:0");
        var app = builder.Build();
        var hub = new FakeHub(app);
        configure?.Invoke(hub);
        app.MapGet("/api/models/{org}/{name}/revision/{revision}", hub.Revision);
        app.MapGet("/{org}/{name}/resolve/{revision}/{**file}", hub.Resolve);
        await app.StartAsync();
        hub.Endpoint = app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First();
        return hub;
    }

    public byte[] AddFile(string name, int size, int seed = 1)
    {
        var bytes = new byte[size];
        new Random(seed).NextBytes(bytes);
        Files[name] = bytes;
        return bytes;
    }

    public void AddText(string name, string text) => Files[name] = Encoding.UTF8.GetBytes(text);

    public int CountRequests(string contains) => Requests.Count(r => r.Contains(contains, StringComparison.Ordinal));

    private async Task Revision(HttpContext context, string org, string name, string revision)
    {
        Log(context);
        if (!await Admit(context, $"{org}/{name}")) return;
        var body = new
        {
            id = ModelId,
            sha = Commit,
            siblings = Files.Select(f => Sibling(f.Key, f.Value))
                .Concat(ListedOnly.Select(f => new Dictionary<string, object> { ["rfilename"] = f.Key, ["size"] = f.Value }))
                .Append(new Dictionary<string, object> { ["rfilename"] = "original/consolidated.pth", ["size"] = 10L })
                .Append(new Dictionary<string, object> { ["rfilename"] = "pytorch_model.bin", ["size"] = 10L }),
        };
        context.Response.ContentType = "application/json";
        await context.Response.WriteAsync(JsonSerializer.Serialize(body));
    }

    /// <summary>The Hub stores *.safetensors in LFS: its ETag is then the sha256, else the git blob id.</summary>
    public static bool IsLfs(string file) => file.EndsWith(".safetensors", StringComparison.Ordinal);

    /// <summary>git's object id of a blob: sha1("blob &lt;size&gt;\0" + contents).</summary>
    public static string GitBlobId(byte[] bytes) =>
        Convert.ToHexStringLower(SHA1.HashData([.. Encoding.ASCII.GetBytes($"blob {bytes.Length}\0"), .. bytes]));

    /// <summary>The name huggingface_hub gives the file's blob in the cache.</summary>
    public static string Etag(string file, byte[] bytes) => IsLfs(file) ? Convert.ToHexStringLower(SHA256.HashData(bytes)) : GitBlobId(bytes);

    private Dictionary<string, object> Sibling(string file, byte[] bytes)
    {
        var sibling = new Dictionary<string, object> { ["rfilename"] = file, ["size"] = (long)bytes.Length };
        if (WithoutBlobIds) return sibling;
        if (IsLfs(file))
        {
            // blobId is the git id of the LFS pointer file; the real file is described under lfs.
            byte[] pointer = Encoding.ASCII.GetBytes($"version https://git-lfs.github.com/spec/v1\noid sha256:{Etag(file, bytes)}\nsize {bytes.Length}\n");
            sibling["blobId"] = GitBlobId(pointer);
            sibling["lfs"] = new { sha256 = Etag(file, bytes), size = (long)bytes.Length, pointerSize = pointer.Length };
        }
        else
        {
            sibling["blobId"] = GitBlobId(bytes);
        }
        return sibling;
    }

    private async Task Resolve(HttpContext context, string org, string name, string revision, string file)
    {
        Log(context);
        if (!await Admit(context, $"{org}/{name}")) return;
        if (!Files.TryGetValue(file, out var bytes))
        {
            context.Response.StatusCode = 404;
            context.Response.Headers["X-Error-Code"] = "EntryNotFound";
            return;
        }
        context.Response.Headers["X-Repo-Commit"] = Commit;
        context.Response.Headers.ETag = $"\"{Etag(file, bytes)}\"";
        long start = 0;
        string? range = context.Request.Headers.Range;
        if (range is not null && range.StartsWith("bytes=", StringComparison.Ordinal) && range.EndsWith('-'))
        {
            start = long.Parse(range["bytes=".Length..^1]);
            if (start >= bytes.Length)
            {
                context.Response.StatusCode = 416;
                context.Response.Headers.ContentRange = $"bytes */{bytes.Length}";
                return;
            }
            context.Response.StatusCode = 206;
            context.Response.Headers.ContentRange = $"bytes {start}-{bytes.Length - 1}/{bytes.Length}";
        }
        long count = bytes.Length - start;
        context.Response.ContentLength = count;
        if (CutCount > 0 && count > CutAfterBytes)
        {
            CutCount--;
            await context.Response.Body.WriteAsync(bytes.AsMemory((int)start, CutAfterBytes));
            await context.Response.Body.FlushAsync();
            await Task.Delay(100); // let the bytes reach the client before the reset
            context.Abort();
            return;
        }
        if (Hold is { } hold && file == HoldFile && count > 1)
        {
            int half = (int)(count / 2);
            await context.Response.Body.WriteAsync(bytes.AsMemory((int)start, half));
            await context.Response.Body.FlushAsync();
            await hold.WaitAsync(context.RequestAborted);
            await context.Response.Body.WriteAsync(bytes.AsMemory((int)start + half, (int)count - half));
            return;
        }
        await context.Response.Body.WriteAsync(bytes.AsMemory((int)start, (int)count));
    }

    /// <summary>The Hub answers an unknown repository with 401 RepoNotFound without a token, 404 with one.</summary>
    private async Task<bool> Admit(HttpContext context, string repo)
    {
        string auth = context.Request.Headers.Authorization.ToString();
        if (repo != ModelId)
        {
            context.Response.StatusCode = auth.Length == 0 ? 401 : 404;
            context.Response.Headers["X-Error-Code"] = "RepoNotFound";
            await context.Response.WriteAsync("{\"error\":\"Repository Not Found\"}");
            return false;
        }
        if (RequiredToken is not null && auth != $"Bearer {RequiredToken}")
        {
            context.Response.StatusCode = auth.Length == 0 ? 401 : 403;
            context.Response.Headers["X-Error-Code"] = "GatedRepo";
            await context.Response.WriteAsync("{\"error\":\"Access to model is restricted\"}");
            return false;
        }
        return true;
    }

    private void Log(HttpContext context) =>
        Requests.Enqueue($"{context.Request.Path} range={context.Request.Headers.Range} auth={context.Request.Headers.Authorization}");

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync();
        await _app.DisposeAsync();
    }
}
