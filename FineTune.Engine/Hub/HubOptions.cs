namespace FineTune.Engine.Hub;

/// <summary>Where to download from and where to keep models.</summary>
public sealed record HubOptions
{
    public const string DefaultEndpoint = "https://huggingface.co";

    /// <summary>HF_ENDPOINT, else https://huggingface.co (a mirror such as https://hf-mirror.com also works).</summary>
    public string Endpoint { get; init; } = Environment.GetEnvironmentVariable("HF_ENDPOINT") is { Length: > 0 } e ? e : DefaultEndpoint;

    /// <summary>HF_TOKEN, sent as a Bearer token; needed for gated models (Llama) after accepting their licence.</summary>
    public string? Token { get; init; } = Environment.GetEnvironmentVariable("HF_TOKEN") is { Length: > 0 } t ? t : null;

    /// <summary>Models live in &lt;CacheFolder&gt;/models--Org--Name/snapshots/&lt;commit&gt;/ and are reused across runs.</summary>
    public string CacheFolder { get; init; } = DefaultCacheFolder();

    /// <summary>HF_HUB_OFFLINE=1: never touch the network, use only complete cached snapshots.</summary>
    public bool Offline { get; init; } = Environment.GetEnvironmentVariable("HF_HUB_OFFLINE") is "1" or "true" or "TRUE" or "yes";

    /// <summary>Times a file download is resumed after a dropped connection before giving up.</summary>
    public int Retries { get; init; } = 3;

    /// <summary>Pause before a retry (grows with each try).</summary>
    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>Shortest time between two progress reports of one file.</summary>
    public TimeSpan ProgressInterval { get; init; } = TimeSpan.FromMilliseconds(250);

    public static string DefaultCacheFolder() =>
        Environment.GetEnvironmentVariable("FINETUNE_HUB_CACHE") is { Length: > 0 } folder
            ? folder
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.LocalApplicationData, Environment.SpecialFolderOption.Create), "FineTune", "hub");
}

/// <summary>One file of a model repository as the Hub lists it; Size is null when the listing does not say.</summary>
public sealed record HubFile(string Path, long? Size);

/// <summary>
/// Download progress. Bytes/TotalBytes count the whole model (TotalBytes null while a size is unknown);
/// FileBytes/FileTotal the current file. Speed is over this run's transfer only (resumed bytes excluded).
/// </summary>
public sealed record DownloadProgress(
    string ModelId,
    string File,
    int FileIndex,
    int FileCount,
    long FileBytes,
    long? FileTotal,
    long Bytes,
    long? TotalBytes,
    double BytesPerSecond,
    TimeSpan? Eta,
    bool FileDone)
{
    public double? Fraction => TotalBytes is > 0 ? (double)Bytes / TotalBytes.Value : null;
}
