using System.Diagnostics.CodeAnalysis;
using System.Text.RegularExpressions;

namespace FineTune.Engine.Hub;

/// <summary>
/// What a model reference names, decided here for every front end: an existing directory is a model folder, anything
/// else a Hugging Face Hub id (transformers' from_pretrained looks at the disk first the same way). The Hub id rule is
/// the one the wizard, the command line, the downloader and the adapter's base_model_name_or_path all use.
/// </summary>
public static partial class ModelReference
{
    /// <summary>"owner/name" as the Hugging Face Hub allows it: letters, digits, '-', '_', '.'; no "..", no leading dot, at most 96 characters.</summary>
    public static bool IsHubId([NotNullWhen(true)] string? id) =>
        id is { Length: > 2 and <= 96 } && HubId().IsMatch(id) && !id.Contains("..", StringComparison.Ordinal);

    /// <summary>True when <paramref name="reference"/> names a directory on this machine: it is then a model folder, never a Hub id.</summary>
    public static bool IsFolder(string reference) => Directory.Exists(reference);

    /// <summary>
    /// True when <paramref name="folder"/> is a Hugging Face model folder: a directory holding config.json (as
    /// from_pretrained requires). Whether its weights and tokenizer are usable is for the loaders to say.
    /// </summary>
    public static bool IsModelFolder(string folder) => IsFolder(folder) && File.Exists(Path.Combine(folder, ConfigFile));

    /// <summary>Why <paramref name="reference"/> can be neither a model folder nor a Hub id; null when it can be one.</summary>
    public static string? Problem(string reference) =>
        IsFolder(reference)
            ? IsModelFolder(reference) ? null : $"'{reference}' has no {ConfigFile}; it is not a Hugging Face model folder."
            : IsHubId(reference) ? null
            : $"'{reference}' is not a folder, nor a Hub id such as Qwen/Qwen2.5-0.5B-Instruct.";

    private const string ConfigFile = "config.json";

    [GeneratedRegex(@"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
    private static partial Regex HubId();
}
