namespace FineTune.Engine.Hub;

/// <summary>Where to download from and where to keep models.</summary>
public sealed record HubOptions
{
    public const string DefaultEndpoint = "https://huggingface.co";

    /// <summary>HF_ENDPOINT, else https://huggingface.co (a mirror such as https://hf-mirror.com also works).</summary>
    public string Endpoint { get; init; } = Environment.GetEnvironmentVariable("HF_ENDPOINT") is { Length: > 0 } e ? e : DefaultEndpoint;

    /// <summary>
    /// Sent as a Bearer token; needed for gated models (Llama) after accepting their licence. As huggingface_hub finds it:
    /// HF_TOKEN (or the older HUGGING_FACE_HUB_TOKEN), else the file <c>hf auth login</c> saved (<see cref="HubPaths.TokenFile"/>).
    /// </summary>
    public string? Token { get; init; } = HubPaths.FindToken();

    /// <summary>
    /// The Hugging Face cache shared with Python (<see cref="HubPaths.CacheFolder"/>): a model downloaded by either
    /// is found by the other. Layout: models--Org--Name/{blobs,snapshots/&lt;commit&gt;,refs/&lt;revision&gt;}.
    /// </summary>
    public string CacheFolder { get; init; } = HubPaths.CacheFolder();

    /// <summary>HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) = 1/ON/YES/TRUE: never touch the network, use only cached snapshots.</summary>
    public bool Offline { get; init; } = HubPaths.IsTrue("HF_HUB_OFFLINE") || HubPaths.IsTrue("TRANSFORMERS_OFFLINE");

    /// <summary>Times a file download is resumed after a dropped connection before giving up.</summary>
    public int Retries { get; init; } = 3;

    /// <summary>Pause before a retry (grows with each try).</summary>
    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromSeconds(2);

    /// <summary>Shortest time between two progress reports of one file.</summary>
    public TimeSpan ProgressInterval { get; init; } = TimeSpan.FromMilliseconds(250);
}

/// <summary>
/// One file of a model repository as the Hub lists it; Size is null when the listing does not say. Etag names the
/// file's blob in the cache as huggingface_hub names it (the Hub's ETag): the sha256 of an LFS file, else its git
/// blob id; null when the listing does not say (a mirror without blob ids), and the file is then kept in the snapshot.
/// </summary>
public sealed record HubFile(string Path, long? Size, string? Etag = null);

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
