using System.Net;
using System.Text.Json;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Mvc.Testing;

namespace FineTune.Tests.Web;

/// <summary>The real app on Kestrel at 127.0.0.1 (a free port), not an in-memory test server.</summary>
public sealed class WebAppFixture : IDisposable
{
    private readonly WebApplicationFactory<Program> _factory;
    public string DataDirectory { get; } = Directory.CreateTempSubdirectory("finetune-web-").FullName;
    public HttpClient Client { get; }

    public WebAppFixture()
    {
        _factory = new WebApplicationFactory<Program>()
            .WithWebHostBuilder(web => web
                .UseEnvironment("Production")
                .UseSetting("FineTune:DataDirectory", DataDirectory)
                .UseUrls("http://127.0.0.1:0"));
        _factory.UseKestrel();
        _factory.StartServer();
        Client = _factory.CreateClient();
    }

    public void Dispose()
    {
        Client.Dispose();
        _factory.Dispose();
        Directory.Delete(DataDirectory, recursive: true);
    }
}

public class WebAppTests(WebAppFixture app) : IClassFixture<WebAppFixture>
{
    [Fact]
    public async Task Serves_the_home_page_on_loopback()
    {
        Assert.Equal("127.0.0.1", app.Client.BaseAddress!.Host);
        var response = await app.Client.GetAsync("/");

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        string html = await response.Content.ReadAsStringAsync();
        Assert.Contains("FineTune", html);
        Assert.Contains("_content/MudBlazor/MudBlazor.min", html);
    }

    [Fact]
    public async Task Serves_static_files_from_the_top_level_wwwroot()
    {
        var response = await app.Client.GetAsync("/app.css");
        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
    }

    [Fact]
    public async Task Healthz_reports_the_backend_it_chose()
    {
        var response = await app.Client.GetAsync("/healthz");

        Assert.Equal(HttpStatusCode.OK, response.StatusCode);
        using var json = JsonDocument.Parse(await response.Content.ReadAsStringAsync());
        Assert.Equal("ok", json.RootElement.GetProperty("status").GetString());
        var backend = json.RootElement.GetProperty("backend");
        Assert.Contains(backend.GetProperty("device").GetString(), new[] { "cpu", "cuda" });
        Assert.False(string.IsNullOrWhiteSpace(backend.GetProperty("reason").GetString()));
    }
}
