using System.ComponentModel.DataAnnotations;

namespace FineTune.Web.Infrastructure;

/// <summary>The "FineTune" section of appsettings.json.</summary>
public sealed class FineTuneOptions
{
    public const string Section = "FineTune";

    /// <summary>Folder for the SQLite database, uploaded data, downloaded models and runs. Relative paths start at the app's content root.</summary>
    [Required]
    public string DataDirectory { get; set; } = "data";
}
