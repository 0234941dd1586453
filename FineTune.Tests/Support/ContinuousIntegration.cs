namespace FineTune.Tests.Support;

/// <summary>
/// Whether this run is CI (CI=true, as .ci/run's environment sets it). CI installs every optional prerequisite
/// (Chromium, npm's tokenizers, libgomp1), so there a missing one fails its tests; elsewhere they are skipped with
/// the reason and how to get it.
/// </summary>
public static class ContinuousIntegration
{
    public static bool Running { get; } =
        Environment.GetEnvironmentVariable("CI") is { } ci && ci.Equals("true", StringComparison.OrdinalIgnoreCase);
}
