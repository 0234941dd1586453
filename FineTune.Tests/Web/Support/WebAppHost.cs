using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.Mvc.Testing;
using Microsoft.AspNetCore.TestHost;
using Microsoft.Extensions.DependencyInjection;

namespace FineTune.Tests.Web.Support;

/// <summary>The real app on Kestrel at 127.0.0.1 (a free port) with its own data folder; optional service overrides (test doubles).</summary>
public class WebAppHost : IDisposable
{
    private readonly WebApplicationFactory<Program> _factory;
    public string DataDirectory { get; } = Directory.CreateTempSubdirectory("finetune-web-").FullName;
    public HttpClient Client { get; }
    public IServiceProvider Services => _factory.Services;
    public Uri BaseAddress => Client.BaseAddress!;

    public WebAppHost(Action<IServiceCollection>? services = null, IDictionary<string, string?>? settings = null, string urls = "http://127.0.0.1:0")
    {
        _factory = new WebApplicationFactory<Program>()
            .WithWebHostBuilder(web =>
            {
                web.UseEnvironment("Production")
                    .UseSetting("FineTune:DataDirectory", DataDirectory)
                    .UseUrls(urls)
                    // Framework files (blazor.web.js) come from the build's static web assets manifest, which only
                    // Development loads by itself; a published app has them in wwwroot instead.
                    .UseStaticWebAssets();
                foreach (var (key, value) in settings ?? new Dictionary<string, string?>())
                    web.UseSetting(key, value);
                if (services is not null) web.ConfigureTestServices(services);
            });
        _factory.UseKestrel();
        _factory.StartServer();
        // A plain client over the network stack: no redirect following (tests look at them), cookies kept.
        var address = new Uri(_factory.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses.First());
        if (address.Host is "0.0.0.0" or "[::]") address = new UriBuilder(address) { Host = "127.0.0.1" }.Uri; // bound to all: use loopback
        Client = new HttpClient(new HttpClientHandler { AllowAutoRedirect = false, UseCookies = true }) { BaseAddress = address };
    }

    public void Dispose()
    {
        Client.Dispose();
        _factory.Dispose();
        try { Directory.Delete(DataDirectory, recursive: true); } catch (IOException) { /* SQLite may hold the file a moment longer */ }
        GC.SuppressFinalize(this);
    }
}
