using System.Net;
using FineTune.Tests.Web.Support;
using FineTune.Web.Infrastructure;

namespace FineTune.Tests.Web.Infrastructure;

public class AccessGateTests
{
    [Theory]
    [InlineData("http://localhost:5080", false)]
    [InlineData("http://127.0.0.1:5080", false)]
    [InlineData("http://127.0.0.2:80", false)]
    [InlineData("http://[::1]:5080", false)]
    [InlineData("http://0.0.0.0:5080", true)]
    [InlineData("http://[::]:5080", true)]
    [InlineData("http://*:5080", true)]
    [InlineData("http://+:5080", true)]
    [InlineData("http://192.168.1.20:5080", true)]
    [InlineData("https://finetune.example.com", true)]
    public void Knows_which_addresses_reach_beyond_this_machine(string url, bool exposed) =>
        Assert.Equal(exposed, AccessGate.IsExposedAddress(url));

    [Fact]
    public void Token_must_match_exactly_and_exist()
    {
        Assert.True(AccessGate.Matches("s3cret-Token", "s3cret-Token"));
        Assert.False(AccessGate.Matches("s3cret-token", "s3cret-Token"));
        Assert.False(AccessGate.Matches("", null));
        Assert.False(AccessGate.Matches("", ""));
    }

    [Fact]
    public async Task On_loopback_no_sign_in_is_needed()
    {
        using var app = new WebAppHost();
        Assert.Equal(HttpStatusCode.OK, (await app.Client.GetAsync("/history")).StatusCode);
    }

    [Fact]
    public async Task Bound_beyond_loopback_every_page_needs_the_token()
    {
        using var app = new WebAppHost(settings: new Dictionary<string, string?> { ["FineTune:AccessToken"] = "open-sesame-42" }, urls: "http://0.0.0.0:0");
        var client = app.Client;

        var page = await client.GetAsync("/history");
        Assert.Equal(HttpStatusCode.Redirect, page.StatusCode);
        Assert.Equal("/login?returnUrl=%2Fhistory", page.Headers.Location?.OriginalString);
        Assert.Equal(HttpStatusCode.Unauthorized, (await client.PostAsync("/hubs/training/negotiate?negotiateVersion=1", null)).StatusCode);
        Assert.Equal(HttpStatusCode.Redirect, (await client.GetAsync("/data/template.xlsx")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/healthz")).StatusCode);
        var login = await client.GetAsync("/login");
        Assert.Equal(HttpStatusCode.OK, login.StatusCode);
        Assert.Contains("name=\"token\"", await login.Content.ReadAsStringAsync());

        string antiforgery = System.Text.RegularExpressions.Regex.Match(await login.Content.ReadAsStringAsync(), "name=\"__RequestVerificationToken\"[^>]*value=\"([^\"]+)\"").Groups[1].Value;
        var wrong = await client.PostAsync("/auth/login", new FormUrlEncodedContent(new Dictionary<string, string> { ["token"] = "guess", ["returnUrl"] = "/history", ["__RequestVerificationToken"] = antiforgery }));
        Assert.StartsWith("/login?failed=1", wrong.Headers.Location?.OriginalString);
        Assert.Equal(HttpStatusCode.Redirect, (await client.GetAsync("/history")).StatusCode);

        var right = await client.PostAsync("/auth/login", new FormUrlEncodedContent(new Dictionary<string, string> { ["token"] = "open-sesame-42", ["returnUrl"] = "//evil.example.com/", ["__RequestVerificationToken"] = antiforgery }));
        Assert.Equal("/", right.Headers.Location?.OriginalString); // no open redirect
        Assert.Equal(HttpStatusCode.OK, (await client.GetAsync("/history")).StatusCode);
    }
}
