namespace FineTune.Web.Features.Data;

/// <summary>Why a file could not be imported. The UI shows a localized text for <see cref="Code"/>; <see cref="Exception.Message"/> is English for logs.</summary>
public enum ImportErrorCode
{
    /// <summary>Extension not one of .xlsx .csv .tsv .jsonl .json.</summary>
    UnsupportedExtension,
    /// <summary>Old binary .xls, or an encrypted (password protected) workbook.</summary>
    LegacyOrEncryptedExcel,
    /// <summary>Not a readable .xlsx package.</summary>
    CorruptExcel,
    /// <summary>The text is in none of the supported encodings.</summary>
    UnknownEncoding,
    /// <summary>A quoted CSV field is never closed.</summary>
    UnclosedQuote,
    /// <summary>JSON/JSONL syntax error.</summary>
    InvalidJson,
    /// <summary>A JSON value that is not an object with instruction/output.</summary>
    UnexpectedJsonShape,
    /// <summary>Nothing to import.</summary>
    EmptyFile,
    /// <summary>Bigger than the configured upload limit.</summary>
    TooLarge,
}

/// <summary>A file that cannot be imported, with what is wrong (<see cref="Code"/>) and where (<see cref="Location"/>: "line 12", "sheet 'Q&amp;A'").</summary>
public sealed class DataImportException(ImportErrorCode code, string message, string? location = null, Exception? inner = null)
    : Exception(location is null ? message : $"{message} ({location})", inner)
{
    public ImportErrorCode Code { get; } = code;
    public string? Location { get; } = location;
    /// <summary>A short technical detail (parser message, byte offset) shown under the localized text.</summary>
    public string Detail { get; } = message;
}
