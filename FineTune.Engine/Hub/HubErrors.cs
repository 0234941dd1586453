namespace FineTune.Engine.Hub;

/// <summary>A model could not be downloaded from the Hub; the message says why in plain English and what to do.</summary>
public class HubException : Exception
{
    public HubException(string message, Exception? inner = null) : base(message, inner) { }
}

/// <summary>The Hub could not be reached at all (no connection, DNS, proxy, TLS, timeout).</summary>
public sealed class HubOfflineException(string message, Exception? inner = null) : HubException(message, inner);

/// <summary>401/403: the model is gated or private, or HF_TOKEN was refused.</summary>
public sealed class HubAccessDeniedException(string message, int statusCode) : HubException(message)
{
    public int StatusCode { get; } = statusCode;
}

/// <summary>404 (or the Hub's RepoNotFound): no such model, revision or file.</summary>
public sealed class HubNotFoundException(string message) : HubException(message);

/// <summary>The model has none of the files we can train from (no .safetensors weights).</summary>
public sealed class HubUnsupportedModelException(string message) : HubException(message);

/// <summary>The cache folder's disk is full (ENOSPC) or would not hold the model.</summary>
public sealed class HubDiskFullException(string message, Exception? inner = null) : HubException(message, inner);
