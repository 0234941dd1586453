using Microsoft.Extensions.Localization;

namespace FineTune.Web.Features.Runs;

/// <summary>What kind of failure ended a run, for a headline in the UI's language above the (English) detail.</summary>
public enum RunFailureKind { Other, DiskFull, ReadOnly, OutOfMemory, Database, Native, NotEnoughMemory }

/// <summary>
/// Classifies why a run failed. The stored error stays the exception's own message (what the log and the CLI show);
/// the page puts a localized headline over it, derived here from the message, so a run failed by an older version
/// reads the same.
/// </summary>
public static class RunFailure
{
    /// <summary>The message stored with a failed run: the exception's, with the innermost cause when it says more.</summary>
    public static string Message(Exception e)
    {
        var inner = e;
        while (inner.InnerException is not null) inner = inner.InnerException;
        return ReferenceEquals(inner, e) || e.Message.Contains(inner.Message, StringComparison.Ordinal) ? e.Message : $"{e.Message} ({inner.Message})";
    }

    public static RunFailureKind Classify(string? error)
    {
        if (string.IsNullOrEmpty(error)) return RunFailureKind.Other;
        bool Has(string s) => error.Contains(s, StringComparison.OrdinalIgnoreCase);
        if (Has("Not enough memory to load")) return RunFailureKind.NotEnoughMemory; // the engine's check, before loading
        if (Has("No space left") || Has("disk is full") || Has("disk full") || Has("not enough space")) return RunFailureKind.DiskFull;
        if (Has("Read-only file system") || Has("readonly database") || Has("read-only") || Has("Access to the path")) return RunFailureKind.ReadOnly;
        if (Has("out of memory") || Has("can't allocate memory") || Has("Out of memory")) return RunFailureKind.OutOfMemory;
        if (Has("SQLite Error") || Has("database")) return RunFailureKind.Database;
        if (Has("INTERNAL ASSERT FAILED") || Has("libtorch") || Has("c10::")) return RunFailureKind.Native;
        return RunFailureKind.Other;
    }

    /// <summary>"Training failed: the disk is full — free space …" in the page's language, with the detail after it.</summary>
    public static string Describe(IStringLocalizer localizer, string? error) =>
        localizer["Train_Failed", $"{localizer["RunFailure_" + Classify(error)]} ({error})"];

}
