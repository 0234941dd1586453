using System.ComponentModel.DataAnnotations;

namespace FineTune.Web.Infrastructure;

/// <summary>The "FineTune" section of appsettings.json.</summary>
public sealed class FineTuneOptions
{
    public const string Section = "FineTune";

    /// <summary>Folder for the SQLite database, uploaded data, downloaded models and runs. Relative paths start at the app's content root.</summary>
    [Required]
    public string DataDirectory { get; set; } = "data";

    /// <summary>Largest accepted upload, in megabytes.</summary>
    [Range(1, 4096)]
    public int MaxUploadMegabytes { get; set; } = 50;

    /// <summary>Folders under which local models may be opened ("local folder" in the model step). Relative paths start at the content root; the data folder's models/ is always allowed.</summary>
    public List<string> ModelRoots { get; set; } = [];

    /// <summary>
    /// Password that protects the app when it listens on a non-loopback address. Without one the app refuses
    /// to start on such an address: anyone on the network could otherwise train models and read files.
    /// </summary>
    public string? AccessToken { get; set; }

    public long MaxUploadBytes => MaxUploadMegabytes * 1024L * 1024L;
}
