using System.Text.RegularExpressions;

namespace FineTune.Web.Features.Models;

public static partial class ModelIds
{
    /// <summary>"owner/name" as the Hugging Face Hub allows it (letters, digits, '-', '_', '.'; no "..", no leading dot).</summary>
    public static bool IsValidHubId(string? id) =>
        id is { Length: > 2 and <= 96 } && HubId().IsMatch(id) && !id.Contains("..", StringComparison.Ordinal);

    [GeneratedRegex(@"^[A-Za-z0-9][A-Za-z0-9_.\-]*/[A-Za-z0-9][A-Za-z0-9_.\-]*$")]
    private static partial Regex HubId();
}
