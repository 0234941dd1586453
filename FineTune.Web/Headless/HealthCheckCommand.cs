using System.CommandLine;

namespace FineTune.Web.Headless;

/// <summary>`healthcheck [URL]`: exit 0 when the app answers /healthz with success, else 1 (Docker HEALTHCHECK; the runtime image has no curl).</summary>
public static class HealthCheckCommand
{
    public const string Name = "healthcheck";

    public static Command Create(HeadlessConsole console)
    {
        var url = new Argument<string>("url") { Description = "The health endpoint", DefaultValueFactory = _ => "http://127.0.0.1:8080/healthz" };
        var command = new Command(Name, "Exit 0 when the running app answers its health endpoint, else 1 (Docker HEALTHCHECK)") { url };
        command.SetAction((parsed, cancellationToken) => RunAsync(parsed.GetValue(url)!, console, cancellationToken));
        return command;
    }

    private static async Task<int> RunAsync(string url, HeadlessConsole console, CancellationToken cancellationToken)
    {
        try
        {
            using var client = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
            using var response = await client.GetAsync(url, cancellationToken).ConfigureAwait(false);
            if (response.IsSuccessStatusCode) return 0;
            await console.Error.WriteLineAsync($"healthcheck: {url} answered {(int)response.StatusCode}").ConfigureAwait(false);
            return 1;
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException or UriFormatException or InvalidOperationException)
        {
            await console.Error.WriteLineAsync($"healthcheck: {url} is not reachable: {e.Message}").ConfigureAwait(false);
            return 1;
        }
    }
}
