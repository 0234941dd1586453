using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.RegularExpressions;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace FineTune.Engine.Hub;

/// <summary>
/// Downloads the files of a Hugging Face model that FineTune needs (configs, tokenizer, safetensors) into the
/// Hugging Face cache, laid out as Python's huggingface_hub lays it (file_download.py), so either finds what the
/// other downloaded:
/// <code>
/// &lt;cache&gt;/models--Org--Name/
///   blobs/&lt;etag&gt;                 file contents, named by the Hub's ETag (LFS sha256, else git blob id)
///   snapshots/&lt;commit&gt;/&lt;file&gt;    relative symlinks ../../blobs/&lt;etag&gt; (the file itself where links are refused)
///   refs/&lt;revision&gt;             the commit the revision ("main") pointed to, no newline
///   .no_exist/&lt;commit&gt;/&lt;file&gt;    empty: an optional file this commit does not have
/// &lt;cache&gt;/.locks/models--Org--Name/   lock files
/// </code>
/// A blob is written as "&lt;etag&gt;.incomplete" and renamed when whole; an interrupted blob is resumed with an HTTP
/// Range request, in this run (after a dropped connection) or the next.
/// </summary>
public sealed partial class HubDownloader
{
    private static readonly string[] WantedNames =
    [
        "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
        "chat_template.jinja", "qwen.tiktoken", "model.safetensors.index.json",
    ];

    private readonly HttpClient _http;
    private readonly HubOptions _options;
    private readonly ILogger _logger;

    public HubDownloader(HttpClient http, HubOptions? options = null, ILogger<HubDownloader>? logger = null)
    {
        _http = http;
        _options = options ?? new HubOptions();
        _logger = (ILogger?)logger ?? NullLogger.Instance;
    }

    public HubOptions Options => _options;

    /// <summary>True for the files a model folder needs: configs, tokenizer files and top-level safetensors.</summary>
    public static bool IsWanted(string path) =>
        !path.Contains('/') && (WantedNames.Contains(path) || path.EndsWith(".safetensors", StringComparison.Ordinal));

    /// <summary>"Qwen/Qwen2.5-0.5B-Instruct" → &lt;cache&gt;/models--Qwen--Qwen2.5-0.5B-Instruct (huggingface_hub's repo_folder_name).</summary>
    public string RepositoryFolder(string modelId) =>
        Path.Combine(_options.CacheFolder, "models--" + ValidateModelId(modelId).Replace("/", "--"));

    /// <summary>
    /// The folder of a model reference (<see cref="ModelReference"/>): a local model folder as it is; a Hub id's snapshot
    /// in the cache, downloaded when missing. Throws <see cref="ArgumentException"/> for a reference that is neither.
    /// </summary>
    public Task<string> ResolveModelFolderAsync(string modelIdOrFolder, IProgress<DownloadProgress>? progress = null,
        CancellationToken cancellationToken = default) =>
        ModelReference.Problem(modelIdOrFolder) is { } problem ? throw new ArgumentException(problem, nameof(modelIdOrFolder))
        : ModelReference.IsFolder(modelIdOrFolder) ? Task.FromResult(Path.GetFullPath(modelIdOrFolder))
        : DownloadAsync(modelIdOrFolder, progress, cancellationToken: cancellationToken);

    /// <summary>
    /// Makes sure the model's files are in the cache and returns the snapshot folder holding them.
    /// Files already there (from us or from Python) are not fetched again; a blob shared with another revision is
    /// linked, not downloaded; with no connection (or HF_HUB_OFFLINE) a complete cached snapshot is used.
    /// </summary>
    public async Task<string> DownloadAsync(string modelId, IProgress<DownloadProgress>? progress = null,
        string revision = "main", CancellationToken cancellationToken = default)
    {
        string repository = RepositoryFolder(modelId);
        if (_options.Offline)
            return CachedSnapshot(repository, revision) ?? throw new HubOfflineException(
                $"HF_HUB_OFFLINE is set and {modelId} is not in the cache ({repository}). Unset HF_HUB_OFFLINE to download it once.");
        (string commit, IReadOnlyList<HubFile> files) listing;
        try
        {
            listing = await ListFilesAsync(modelId, revision, cancellationToken).ConfigureAwait(false);
        }
        catch (HubOfflineException) when (CachedSnapshot(repository, revision) is { } cached)
        {
            _logger.LogWarning("The Hub is unreachable; using the cached copy of {ModelId} in {Folder}", modelId, cached);
            return cached;
        }

        var wanted = listing.files.Where(f => IsWanted(f.Path)).OrderBy(f => f.Path, StringComparer.Ordinal).ToList();
        if (!wanted.Any(f => f.Path.EndsWith(".safetensors", StringComparison.Ordinal)))
            throw new HubUnsupportedModelException(
                $"{modelId} has no .safetensors weights at the top of its repository, so it cannot be loaded here. " +
                "Pick a model whose 'Files' tab lists model.safetensors (most models from 2024 on have them).");

        // One download of a model at a time, across runs and processes; a second caller waits, then finds it cached.
        await using var gate = await LockAsync(repository, modelId, cancellationToken).ConfigureAwait(false);
        string snapshot = Path.Combine(repository, "snapshots", SafeName(listing.commit));
        if (!wanted.All(f => IsWhole(Path.Combine(snapshot, f.Path), f.Size)))
        {
            Directory.CreateDirectory(snapshot);
            EnsureDiskSpace(repository, snapshot, wanted, modelId);
            var tracker = new ProgressTracker(modelId, wanted, progress, _options.ProgressInterval);
            for (int i = 0; i < wanted.Count; i++)
            {
                cancellationToken.ThrowIfCancellationRequested();
                await DownloadFileAsync(modelId, listing.commit, wanted[i], i, repository, snapshot, tracker, cancellationToken).ConfigureAwait(false);
            }
        }
        // What this commit lacks, recorded as huggingface_hub records it, so Python offline does not look for it either.
        foreach (string optional in WantedNames.Where(n => !listing.files.Any(f => f.Path == n)))
            MarkMissing(repository, listing.commit, optional);
        await WriteRefAsync(repository, revision, listing.commit).ConfigureAwait(false);
        return snapshot;
    }

    /// <summary>The cached snapshot (the one refs/&lt;revision&gt; names) that holds the model's config.json, or null; no network.</summary>
    public static string? CachedConfigFolder(HubOptions options, string modelId, string revision = "main")
    {
        string repository = Path.Combine(options.CacheFolder, "models--" + ValidateModelId(modelId).Replace("/", "--"));
        string reference = Path.Combine(repository, "refs", SafeName(revision));
        string commit = File.Exists(reference) ? File.ReadAllText(reference).Trim() : revision;
        string snapshot = Path.Combine(repository, "snapshots", SafeName(commit));
        return IsWhole(Path.Combine(snapshot, "config.json"), null) ? snapshot : null;
    }

    /// <summary>
    /// The snapshot folder holding the model's config.json alone, from the cache or fetched into it without the weights
    /// (as huggingface_hub's hf_hub_download of one file lays it out), so the model's facts are known before a download.
    /// </summary>
    public async Task<string> DownloadConfigAsync(string modelId, string revision = "main", CancellationToken cancellationToken = default)
    {
        if (CachedConfigFolder(_options, modelId, revision) is { } cached) return cached;
        string repository = RepositoryFolder(modelId);
        if (_options.Offline)
            throw new HubOfflineException($"HF_HUB_OFFLINE is set and {modelId}'s config.json is not in the cache ({repository}).");
        var (commit, files) = await ListFilesAsync(modelId, revision, cancellationToken).ConfigureAwait(false);
        var config = files.FirstOrDefault(f => f.Path == "config.json")
            ?? throw new HubUnsupportedModelException($"{modelId} has no config.json at the top of its repository; it is not a transformers model.");
        await using var gate = await LockAsync(repository, modelId, cancellationToken).ConfigureAwait(false);
        string snapshot = Path.Combine(repository, "snapshots", SafeName(commit));
        Directory.CreateDirectory(snapshot);
        var tracker = new ProgressTracker(modelId, [config], null, _options.ProgressInterval);
        await DownloadFileAsync(modelId, commit, config, 0, repository, snapshot, tracker, cancellationToken).ConfigureAwait(false);
        await WriteRefAsync(repository, revision, commit).ConfigureAwait(false);
        return snapshot;
    }

    /// <summary>The repository's commit and files (with sizes where the Hub gives them).</summary>
    public async Task<(string Commit, IReadOnlyList<HubFile> Files)> ListFilesAsync(string modelId, string revision = "main",
        CancellationToken cancellationToken = default)
    {
        ValidateModelId(modelId);
        var uri = new Uri($"{_options.Endpoint.TrimEnd('/')}/api/models/{modelId}/revision/{Uri.EscapeDataString(revision)}?blobs=true");
        using var request = NewRequest(HttpMethod.Get, uri);
        using var response = await SendAsync(request, modelId, null, cancellationToken).ConfigureAwait(false);
        try
        {
            using var json = await JsonDocument.ParseAsync(await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false),
                cancellationToken: cancellationToken).ConfigureAwait(false);
            var root = json.RootElement;
            string commit = root.TryGetProperty("sha", out var sha) && sha.ValueKind == JsonValueKind.String ? sha.GetString()! : revision;
            var files = new List<HubFile>();
            if (root.TryGetProperty("siblings", out var siblings) && siblings.ValueKind == JsonValueKind.Array)
            {
                foreach (var sibling in siblings.EnumerateArray())
                {
                    if (!sibling.TryGetProperty("rfilename", out var name) || name.GetString() is not { } path) continue;
                    // An LFS file's own size is under lfs (the top-level one may be its git pointer's).
                    long? size = sibling.TryGetProperty("lfs", out var lfs) && lfs.ValueKind == JsonValueKind.Object &&
                                 lfs.TryGetProperty("size", out var ls) && ls.ValueKind == JsonValueKind.Number ? ls.GetInt64()
                        : sibling.TryGetProperty("size", out var s) && s.ValueKind == JsonValueKind.Number ? s.GetInt64() : null;
                    files.Add(new HubFile(path, size, Etag(sibling)));
                }
            }
            return (commit, files);
        }
        catch (JsonException e)
        {
            throw new HubException($"{_options.Endpoint} answered the file list of {modelId} with something that is not JSON. " +
                                   "If HF_ENDPOINT points to a mirror, check that it serves the Hub API.", e);
        }
        catch (IOException e)
        {
            throw new HubOfflineException($"The connection to {_options.Endpoint} dropped while listing {modelId}'s files: {e.Message}", e);
        }
    }

    /// <summary>
    /// The Hub's ETag of a listed file, as huggingface_hub names the blob: an LFS file's sha256, else the git blob id
    /// (the listing's "blobId" with ?blobs=true).
    /// </summary>
    private static string? Etag(JsonElement sibling)
    {
        string? etag = sibling.TryGetProperty("lfs", out var lfs) && lfs.ValueKind == JsonValueKind.Object &&
                       lfs.TryGetProperty("sha256", out var sha) && sha.ValueKind == JsonValueKind.String ? sha.GetString()
            : sibling.TryGetProperty("blobId", out var blob) && blob.ValueKind == JsonValueKind.String ? blob.GetString()
            : null;
        return etag is not null && EtagPattern().IsMatch(etag) ? etag : null;
    }

    /// <summary>The blob a file's snapshot entry points to; without an ETag the file lives in the snapshot itself.</summary>
    private static string BlobPath(string repository, string snapshot, HubFile file) =>
        file.Etag is { } etag ? Path.Combine(repository, "blobs", etag) : Path.Combine(snapshot, file.Path);

    private async Task DownloadFileAsync(string modelId, string commit, HubFile file, int index, string repository, string snapshot,
        ProgressTracker tracker, CancellationToken cancellationToken)
    {
        string pointer = Path.Combine(snapshot, file.Path);
        if (IsWhole(pointer, file.Size))
        {
            tracker.Skip(index, ResolvedLength(pointer) ?? 0);
            return;
        }
        string blob = BlobPath(repository, snapshot, file);
        if (IsWhole(blob, file.Size)) // the same contents under another revision, or a snapshot link lost
        {
            Link(blob, pointer, newBlob: false);
            tracker.Skip(index, ResolvedLength(blob) ?? 0);
            return;
        }
        Directory.CreateDirectory(Path.GetDirectoryName(blob)!);
        string partial = blob + ".incomplete";
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                await TransferAsync(modelId, commit, file, index, partial, tracker, cancellationToken).ConfigureAwait(false);
                File.Move(partial, blob, overwrite: true);
                if (blob != pointer) Link(blob, pointer, newBlob: true);
                tracker.Done(index);
                return;
            }
            catch (HubOfflineException e) when (attempt < _options.Retries && !cancellationToken.IsCancellationRequested)
            {
                TimeSpan delay = _options.RetryDelay * (attempt + 1);
                _logger.LogWarning("Download of {File} broke off ({Reason}); resuming in {Delay}", file.Path, e.Message, delay);
                await Task.Delay(delay, cancellationToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Appends the rest of the file to the .incomplete file, asking only for the missing bytes.</summary>
    private async Task TransferAsync(string modelId, string commit, HubFile file, int index, string partial,
        ProgressTracker tracker, CancellationToken cancellationToken)
    {
        long have = File.Exists(partial) ? new FileInfo(partial).Length : 0;
        if (file.Size is { } known && have > known) { File.Delete(partial); have = 0; }

        var uri = new Uri($"{_options.Endpoint.TrimEnd('/')}/{modelId}/resolve/{Uri.EscapeDataString(commit)}/{EscapePath(file.Path)}");
        using var request = NewRequest(HttpMethod.Get, uri);
        if (have > 0) request.Headers.Range = new RangeHeaderValue(have, null);
        using var response = await SendAsync(request, modelId, file.Path, cancellationToken, allowRangeNotSatisfiable: have > 0).ConfigureAwait(false);

        if (response.StatusCode == HttpStatusCode.RequestedRangeNotSatisfiable)
        {
            // Nothing is left to fetch: the partial file already holds every byte.
            long? total = response.Content.Headers.ContentRange?.Length ?? file.Size;
            if (total == have) { tracker.Resumed(index, have, total); return; }
            File.Delete(partial);
            throw new HubOfflineException($"The Hub refused to resume {file.Path}; the partial file was removed and it will start over.");
        }

        bool append = have > 0 && response.StatusCode == HttpStatusCode.PartialContent;
        if (!append) have = 0;
        long? fileTotal = append
            ? response.Content.Headers.ContentRange?.Length ?? file.Size
            : response.Content.Headers.ContentLength ?? file.Size;
        tracker.Resumed(index, have, fileTotal);

        try
        {
            await using var output = new FileStream(partial, append ? FileMode.Append : FileMode.Create, FileAccess.Write, FileShare.None, 1 << 16, useAsync: true);
            await using var input = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
            byte[] buffer = new byte[1 << 16];
            long written = have;
            int read;
            while ((read = await input.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
            {
                await output.WriteAsync(buffer.AsMemory(0, read), cancellationToken).ConfigureAwait(false);
                written += read;
                tracker.Advance(index, read, written);
            }
            await output.FlushAsync(cancellationToken).ConfigureAwait(false);
            if (fileTotal is { } expected && written != expected)
                throw new HubOfflineException($"The connection closed after {written:N0} of {expected:N0} bytes of {file.Path}.");
        }
        catch (IOException e) when (IsDiskFull(e))
        {
            throw new HubDiskFullException(
                $"The disk holding {_options.CacheFolder} is full while saving {file.Path} of {modelId}. " +
                "Free some space or choose another cache folder, then start the download again: it resumes where it stopped.", e);
        }
        catch (Exception e) when (e is IOException or HttpRequestException && !cancellationToken.IsCancellationRequested)
        {
            throw new HubOfflineException($"The connection to {_options.Endpoint} dropped while downloading {file.Path}: {e.Message}", e);
        }
    }

    private HttpRequestMessage NewRequest(HttpMethod method, Uri uri)
    {
        var request = new HttpRequestMessage(method, uri);
        // On redirect to the file CDN, HttpClient drops this header, as it should.
        if (_options.Token is { } token) request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", token);
        request.Headers.UserAgent.ParseAdd("FineTune/1.0");
        return request;
    }

    /// <summary>
    /// The snapshot entry as huggingface_hub's _create_symlink makes it: a symlink relative to the entry's folder, so the
    /// cache can be moved or mounted elsewhere; where the file system refuses links (Windows without Developer Mode),
    /// a new blob is moved into the snapshot and a shared one copied, as huggingface_hub does there.
    /// </summary>
    private void Link(string blob, string pointer, bool newBlob)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(pointer)!);
        if (File.Exists(pointer) || new FileInfo(pointer).LinkTarget is not null) File.Delete(pointer); // a stale or broken entry
        string relative = Path.GetRelativePath(Path.GetDirectoryName(pointer)!, blob);
        try
        {
            File.CreateSymbolicLink(pointer, relative);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException && !(e is IOException io && IsDiskFull(io)))
        {
            _logger.LogDebug("Symbolic links are refused in {Folder} ({Reason}); keeping a copy in the snapshot", Path.GetDirectoryName(pointer), e.Message);
            if (newBlob) File.Move(blob, pointer);
            else File.Copy(blob, pointer);
        }
    }

    private static void MarkMissing(string repository, string commit, string file)
    {
        string marker = Path.Combine(repository, ".no_exist", SafeName(commit), file);
        if (File.Exists(marker)) return;
        Directory.CreateDirectory(Path.GetDirectoryName(marker)!);
        File.WriteAllBytes(marker, []);
    }

    /// <summary>huggingface_hub keeps its locks beside the repositories, in &lt;cache&gt;/.locks/models--Org--Name/.</summary>
    private async Task<FileStream> LockAsync(string repository, string modelId, CancellationToken cancellationToken)
    {
        string folder = Path.Combine(_options.CacheFolder, ".locks", Path.GetFileName(repository));
        Directory.CreateDirectory(folder);
        string path = Path.Combine(folder, "finetune-download.lock");
        for (int attempt = 0; ; attempt++)
        {
            try
            {
                return new FileStream(path, FileMode.OpenOrCreate, FileAccess.ReadWrite, FileShare.None);
            }
            catch (IOException e) when (!IsDiskFull(e))
            {
                if (attempt == 0) _logger.LogInformation("Another download of {ModelId} is running; waiting for it", modelId);
                await Task.Delay(TimeSpan.FromMilliseconds(200), cancellationToken).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Sends and turns every failure into a typed <see cref="HubException"/> with advice.</summary>
    private async Task<HttpResponseMessage> SendAsync(HttpRequestMessage request, string modelId, string? file,
        CancellationToken cancellationToken, bool allowRangeNotSatisfiable = false)
    {
        HttpResponseMessage response;
        try
        {
            response = await _http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, cancellationToken).ConfigureAwait(false);
        }
        catch (HttpRequestException e)
        {
            throw new HubOfflineException(
                $"Could not reach {_options.Endpoint} ({Describe(e)}). Check the internet connection or proxy; " +
                "in mainland China set HF_ENDPOINT to a mirror such as https://hf-mirror.com.", e);
        }
        catch (TaskCanceledException e) when (!cancellationToken.IsCancellationRequested)
        {
            throw new HubOfflineException($"{_options.Endpoint} did not answer in time. Check the connection and try again.", e);
        }

        if (response.IsSuccessStatusCode || (allowRangeNotSatisfiable && response.StatusCode == HttpStatusCode.RequestedRangeNotSatisfiable))
            return response;

        using (response)
        {
            int status = (int)response.StatusCode;
            string errorCode = response.Headers.TryGetValues("X-Error-Code", out var codes) ? codes.FirstOrDefault() ?? "" : "";
            string what = file is null ? modelId : $"{file} of {modelId}";
            string page = $"{_options.Endpoint.TrimEnd('/')}/{modelId}";
            if (errorCode == "RepoNotFound" || (status == 404 && file is null))
                throw new HubNotFoundException(
                    $"There is no model '{modelId}' on {_options.Endpoint}" + (_options.Token is null ? " (or it is private)" : "") +
                    ". Check the spelling: Hub ids look like Qwen/Qwen2.5-0.5B-Instruct.");
            if (errorCode == "GatedRepo" || status is 401 or 403)
                throw new HubAccessDeniedException(_options.Token is null
                    ? $"{modelId} is a gated model: accept the licence on the model page ({page}) while logged in, " +
                      "then set HF_TOKEN to an access token of that account (or run `hf auth login` once) and try again."
                    : $"Access to {what} was refused (HTTP {status}). Accept the licence on the model page ({page}) with the " +
                      "account whose token is in HF_TOKEN, and check that the token is valid and allows reading.", status);
            if (status == 404)
                throw new HubNotFoundException($"{what} was not found on {_options.Endpoint} (revision or file missing).");
            if (status == 429)
                throw new HubOfflineException($"{_options.Endpoint} is limiting requests (HTTP 429). Wait a few minutes and try again; setting HF_TOKEN raises the limit.");
            throw new HubOfflineException($"{_options.Endpoint} answered HTTP {status} {response.ReasonPhrase} for {what}. Try again later.");
        }
    }

    private static string Describe(HttpRequestException e) => e.InnerException switch
    {
        SocketException s => s.SocketErrorCode switch
        {
            SocketError.HostNotFound or SocketError.TryAgain or SocketError.NoData => "the host name could not be resolved: no connection?",
            SocketError.ConnectionRefused => "the connection was refused",
            SocketError.NetworkUnreachable or SocketError.HostUnreachable => "the network is unreachable",
            _ => s.Message,
        },
        { } inner => inner.Message,
        null => e.Message,
    };

    /// <summary>Refuses early when the free space cannot hold what is still missing (sizes known from the listing).</summary>
    private void EnsureDiskSpace(string repository, string snapshot, IReadOnlyList<HubFile> files, string modelId)
    {
        long missing = 0;
        foreach (var f in files)
        {
            if (f.Size is not { } size) continue;
            string blob = BlobPath(repository, snapshot, f);
            if (IsWhole(Path.Combine(snapshot, f.Path), size) || IsWhole(blob, size)) continue;
            string partial = blob + ".incomplete";
            missing += size - (File.Exists(partial) ? Math.Min(size, new FileInfo(partial).Length) : 0);
        }
        long free;
        try { free = new DriveInfo(Path.GetFullPath(snapshot)).AvailableFreeSpace; }
        catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException) { return; }
        if (missing > free)
            throw new HubDiskFullException(
                $"{modelId} needs {FormatBytes(missing)} more but only {FormatBytes(free)} is free where {_options.CacheFolder} lives. " +
                "Free some space or choose another cache folder.");
    }

    internal static bool IsDiskFull(IOException e) =>
        (e.HResult & 0xFFFF) is 28 or 112 /* ENOSPC; ERROR_DISK_FULL */ || e.Message.Contains("No space left", StringComparison.OrdinalIgnoreCase);

    /// <summary>True when the file (or the file a snapshot link points to) is there with the expected size.</summary>
    private static bool IsWhole(string path, long? size) =>
        ResolvedLength(path) is { } length && (size is null || length == size);

    /// <summary>The length of the file, following a symlink; null when there is none or the link is broken.</summary>
    private static long? ResolvedLength(string path)
    {
        var info = new FileInfo(path);
        if (info.LinkTarget is not null)
            return info.ResolveLinkTarget(returnFinalTarget: true) is FileInfo { Exists: true } target ? target.Length : null;
        return info.Exists ? info.Length : null;
    }

    /// <summary>
    /// The snapshot that refs/&lt;revision&gt; names (or the revision itself when it is a cached commit), if it holds a
    /// model we can load: config.json, a tokenizer, and every weight file (each shard the index names).
    /// </summary>
    private static string? CachedSnapshot(string repository, string revision)
    {
        string reference = Path.Combine(repository, "refs", SafeName(revision));
        string commit = File.Exists(reference) ? File.ReadAllText(reference).Trim() : revision;
        string snapshot = Path.Combine(repository, "snapshots", SafeName(commit));
        return IsLoadable(snapshot) ? snapshot : null;
    }

    internal static bool IsLoadable(string snapshot)
    {
        if (!Directory.Exists(snapshot) || !IsWhole(Path.Combine(snapshot, "config.json"), null)) return false;
        if (!IsWhole(Path.Combine(snapshot, "tokenizer.json"), null) && !IsWhole(Path.Combine(snapshot, "qwen.tiktoken"), null)) return false;
        string index = Path.Combine(snapshot, "model.safetensors.index.json");
        if (!IsWhole(index, null))
            return IsWhole(Path.Combine(snapshot, "model.safetensors"), null);
        try
        {
            using var json = JsonDocument.Parse(File.ReadAllText(index));
            return json.RootElement.TryGetProperty("weight_map", out var map) && map.ValueKind == JsonValueKind.Object &&
                   map.EnumerateObject().Select(p => p.Value.GetString()).Distinct()
                       .All(shard => shard is not null && !shard.Contains('/') && IsWhole(Path.Combine(snapshot, shard), null));
        }
        catch (JsonException)
        {
            return false;
        }
    }

    /// <summary>refs/&lt;revision&gt; holds the commit, without a newline; a revision that is the commit itself gets no ref.</summary>
    private static async Task WriteRefAsync(string repository, string revision, string commit)
    {
        if (revision == commit) return;
        string refs = Path.Combine(repository, "refs");
        string reference = Path.Combine(refs, SafeName(revision));
        if (File.Exists(reference) && File.ReadAllText(reference) == commit) return;
        Directory.CreateDirectory(refs);
        await File.WriteAllTextAsync(reference, commit).ConfigureAwait(false);
    }

    private static string ValidateModelId(string modelId)
    {
        if (!ModelReference.IsHubId(modelId))
            throw new ArgumentException($"'{modelId}' is not a Hub model id. Write it as Org/Name, e.g. Qwen/Qwen2.5-0.5B-Instruct.", nameof(modelId));
        return modelId;
    }

    private static string SafeName(string name) => string.Concat(name.Select(c => char.IsLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '_'));

    private static string EscapePath(string path) => string.Join('/', path.Split('/').Select(Uri.EscapeDataString));

    internal static string FormatBytes(long bytes) => bytes switch
    {
        >= 1L << 30 => $"{bytes / (double)(1L << 30):0.0} GiB",
        >= 1L << 20 => $"{bytes / (double)(1L << 20):0.0} MiB",
        >= 1L << 10 => $"{bytes / 1024.0:0.0} KiB",
        _ => $"{bytes} B",
    };

    /// <summary>A git blob id or an LFS sha256: safe as a file name.</summary>
    [GeneratedRegex("^[0-9a-f]{40}([0-9a-f]{24})?$")]
    private static partial Regex EtagPattern();

    /// <summary>Keeps totals across files and reports at most every ProgressInterval (and at each file's end).</summary>
    private sealed class ProgressTracker
    {
        private readonly string _modelId;
        private readonly IReadOnlyList<HubFile> _files;
        private readonly long[] _done;
        private readonly long?[] _totals;
        private readonly IProgress<DownloadProgress>? _progress;
        private readonly TimeSpan _interval;
        private readonly Stopwatch _clock = Stopwatch.StartNew();
        private TimeSpan _lastReport = TimeSpan.MinValue;
        private long _transferred; // bytes fetched in this run, for speed

        public ProgressTracker(string modelId, IReadOnlyList<HubFile> files, IProgress<DownloadProgress>? progress, TimeSpan interval)
        {
            _modelId = modelId;
            _files = files;
            _done = new long[files.Count];
            _totals = files.Select(f => f.Size).ToArray();
            _progress = progress;
            _interval = interval;
        }

        public void Skip(int index, long size)
        {
            _totals[index] = size;
            _done[index] = size;
            Report(index, fileDone: true);
        }

        public void Resumed(int index, long have, long? total)
        {
            _done[index] = have;
            _totals[index] = total ?? _totals[index];
            Report(index, fileDone: false, force: true);
        }

        public void Advance(int index, int read, long written)
        {
            _transferred += read;
            _done[index] = written;
            Report(index, fileDone: false);
        }

        public void Done(int index)
        {
            _totals[index] ??= _done[index];
            Report(index, fileDone: true);
        }

        private void Report(int index, bool fileDone, bool force = false)
        {
            if (_progress is null) return;
            TimeSpan now = _clock.Elapsed;
            if (!fileDone && !force && now - _lastReport < _interval) return;
            _lastReport = now;
            long bytes = _done.Sum();
            long? total = _totals.All(t => t is not null) ? _totals.Sum(t => t!.Value) : null;
            double speed = now.TotalSeconds > 0 ? _transferred / now.TotalSeconds : 0;
            TimeSpan? eta = total is { } t && speed > 0 ? TimeSpan.FromSeconds(Math.Max(0, t - bytes) / speed) : null;
            _progress.Report(new DownloadProgress(_modelId, _files[index].Path, index, _files.Count, _done[index], _totals[index],
                bytes, total, speed, eta, fileDone));
        }
    }
}
