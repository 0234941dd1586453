using System.Collections.Concurrent;
using FineTune.Engine.Hub;

namespace FineTune.Web.Features.Models;

/// <summary>Where a model download stands.</summary>
public enum ModelDownloadStatus { Running, Done, Failed, Canceled }

/// <summary>Why a download failed, so the page can say what to do in the user's language.</summary>
public enum ModelDownloadError { None, Offline, AccessDenied, NotFound, DiskFull, Unsupported, InvalidId, Other }

/// <summary>One model's download as the Model step shows it; replaced (never mutated) so readers see a consistent copy.</summary>
public sealed record ModelDownloadState(
    string ModelId,
    ModelDownloadStatus Status,
    DownloadProgress? Progress = null,
    string? Folder = null,
    ModelDownloadError Error = ModelDownloadError.None,
    string? Message = null);

/// <summary>
/// Downloads Hub models ahead of training with progress, one download per model id shared by every caller: the
/// Model step starts and watches it, and training (<see cref="Engine.EngineModels"/>) reuses the finished folder or
/// waits for the running download instead of fetching the model again.
/// </summary>
public sealed class ModelDownloadService(IHttpClientFactory http, HubOptions options, ILogger<ModelDownloadService> logger, ILoggerFactory loggers)
{
    private sealed class Entry
    {
        public required ModelDownloadState State;
        public required Task<string> Task;
        public required CancellationTokenSource Cancel;
    }

    private readonly ConcurrentDictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private readonly ConcurrentDictionary<string, Lazy<Task>> _configs = new(StringComparer.Ordinal);
    private readonly Lock _gate = new();

    /// <summary>Raised (on a background thread) with the model id whenever a download's state changes.</summary>
    public event Action<string>? Changed;

    /// <summary>The download of <paramref name="modelId"/> as it stands, or null when none was started.</summary>
    public ModelDownloadState? Get(string modelId) => _entries.TryGetValue(modelId, out var entry) ? entry.State : null;

    /// <summary>Starts the download unless one is running or done; a failed or canceled one starts over (resuming partial files).</summary>
    public ModelDownloadState Start(string modelId) => StartEntry(modelId).State;

    /// <summary>Stops a running download; the partial file stays and is resumed by the next start.</summary>
    public void Cancel(string modelId)
    {
        if (_entries.TryGetValue(modelId, out var entry) && entry.State.Status == ModelDownloadStatus.Running)
            entry.Cancel.Cancel();
    }

    /// <summary>
    /// Fetches the model's config.json alone into the cache (once per id, no weights), so the engine's facts and the memory
    /// estimate show before the model is downloaded (<see cref="ModelCatalog.FactsOf"/>); <see cref="Changed"/> is raised when it is there.
    /// </summary>
    public Task FetchConfig(string modelId) => _configs.GetOrAdd(modelId, id => new Lazy<Task>(() => Task.Run(async () =>
    {
        try
        {
            var downloader = new HubDownloader(http.CreateClient(nameof(HubDownloader)), options, loggers.CreateLogger<HubDownloader>());
            await downloader.DownloadConfigAsync(id);
            Changed?.Invoke(id);
        }
        catch (Exception e) when (Classify(e) is { } error)
        {
            // The page says the size is not known yet; the download itself reports what went wrong.
            logger.LogInformation("Reading {ModelId}'s config.json failed ({Error}): {Message}", id, error, e.Message);
        }
    }))).Value;

    /// <summary>The model's folder: the finished download, the running one awaited, or a new download.</summary>
    public Task<string> ResolveAsync(string modelId, CancellationToken cancellationToken) =>
        StartEntry(modelId).Task.WaitAsync(cancellationToken);

    private Entry StartEntry(string modelId)
    {
        lock (_gate)
        {
            // A finished folder counts only while it is still on disk (the cache may have been cleared since).
            if (_entries.TryGetValue(modelId, out var existing) && (existing.State.Status == ModelDownloadStatus.Running ||
                existing.State is { Status: ModelDownloadStatus.Done, Folder: { } folder } && Directory.Exists(folder)))
                return existing;
            var entry = new Entry { State = new ModelDownloadState(modelId, ModelDownloadStatus.Running), Task = null!, Cancel = new CancellationTokenSource() };
            _entries[modelId] = entry;
            entry.Task = RunAsync(entry);
            return entry;
        }
    }

    private async Task<string> RunAsync(Entry entry)
    {
        await Task.Yield(); // the caller gets the entry back before any progress arrives
        string modelId = entry.State.ModelId;
        try
        {
            var downloader = new HubDownloader(http.CreateClient(nameof(HubDownloader)), options, loggers.CreateLogger<HubDownloader>());
            string folder = await downloader.DownloadAsync(modelId, new ProgressSink(this, entry), cancellationToken: entry.Cancel.Token);
            Update(entry, entry.State with { Status = ModelDownloadStatus.Done, Folder = folder });
            return folder;
        }
        catch (Exception) when (entry.Cancel.IsCancellationRequested) // whatever the cut connection threw
        {
            Update(entry, entry.State with { Status = ModelDownloadStatus.Canceled });
            throw;
        }
        catch (Exception e) when (Classify(e) is { } error)
        {
            logger.LogWarning("Downloading {ModelId} failed ({Error}): {Message}", modelId, error, e.Message);
            Update(entry, entry.State with { Status = ModelDownloadStatus.Failed, Error = error, Message = e.Message });
            throw;
        }
    }

    private static ModelDownloadError? Classify(Exception e) => e switch
    {
        HubOfflineException => ModelDownloadError.Offline,
        HubAccessDeniedException => ModelDownloadError.AccessDenied,
        HubNotFoundException => ModelDownloadError.NotFound,
        HubDiskFullException => ModelDownloadError.DiskFull,
        HubUnsupportedModelException => ModelDownloadError.Unsupported,
        ArgumentException => ModelDownloadError.InvalidId,
        HubException or IOException or UnauthorizedAccessException => ModelDownloadError.Other,
        _ => null,
    };

    private void Update(Entry entry, ModelDownloadState state)
    {
        entry.State = state;
        Changed?.Invoke(state.ModelId);
    }

    /// <summary>Reports straight into the entry (Progress&lt;T&gt; would post late, after the download ended).</summary>
    private sealed class ProgressSink(ModelDownloadService service, Entry entry) : IProgress<DownloadProgress>
    {
        public void Report(DownloadProgress value)
        {
            if (entry.State.Status == ModelDownloadStatus.Running)
                service.Update(entry, entry.State with { Progress = value });
        }
    }
}
