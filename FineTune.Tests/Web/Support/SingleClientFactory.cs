namespace FineTune.Tests.Web.Support;

/// <summary>An <see cref="IHttpClientFactory"/> that hands out one client (HubDownloader does not dispose it).</summary>
internal sealed class SingleClientFactory(HttpClient client) : IHttpClientFactory
{
    public HttpClient CreateClient(string name) => client;
}
