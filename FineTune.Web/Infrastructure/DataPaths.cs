using Microsoft.Extensions.Options;

namespace FineTune.Web.Infrastructure;

/// <summary>Absolute locations inside the data folder (FineTuneOptions.DataDirectory).</summary>
public sealed class DataPaths
{
    public DataPaths(IOptions<FineTuneOptions> options, IHostEnvironment environment)
        : this(Path.GetFullPath(options.Value.DataDirectory, environment.ContentRootPath),
               options.Value.ModelRoots.Select(r => Path.GetFullPath(r, environment.ContentRootPath)))
    {
    }

    /// <summary>For tests and the headless commands: an absolute data folder and model roots.</summary>
    public DataPaths(string root, IEnumerable<string>? modelRoots = null)
    {
        Root = Path.GetFullPath(root);
        ModelRoots = (modelRoots ?? []).Select(r => Path.GetFullPath(r)).Append(Models).Distinct().ToArray();
    }

    public string Root { get; }
    public string Database => Path.Combine(Root, "finetune.db");
    public string Runs => Path.Combine(Root, "runs");
    public string Models => Path.Combine(Root, "models");
    /// <summary>CUDA kernels compiled at run time (FineTune.Engine/Kernels), by GPU architecture and source hash.</summary>
    public string Kernels => Path.Combine(Root, "kernels");
    /// <summary>ASP.NET data-protection keys (sign-in cookies survive a restart or a recreated container).</summary>
    public string Keys => Path.Combine(Root, "keys");
    public IReadOnlyList<string> ModelRoots { get; }

    public string RunDirectory(int runId) => Path.Combine(Runs, runId.ToString(System.Globalization.CultureInfo.InvariantCulture));
}
