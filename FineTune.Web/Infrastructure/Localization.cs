using System.Globalization;
using Microsoft.AspNetCore.Localization;
using Microsoft.Net.Http.Headers;

namespace FineTune.Web.Infrastructure;

/// <summary>
/// zh-TW and English. The language comes from the culture cookie (the switch in the app bar), else from the
/// browser: any Chinese preference (zh, zh-CN, zh-HK…) gets zh-TW, English gets English; anything else zh-TW.
/// </summary>
public static class Localization
{
    public static readonly CultureInfo[] Cultures = [new("zh-TW"), new("en")];

    public static IServiceCollection AddAppLocalization(this IServiceCollection services)
    {
        services.AddLocalization(options => options.ResourcesPath = "Resources");
        services.Configure<RequestLocalizationOptions>(options =>
        {
            options.DefaultRequestCulture = new RequestCulture(Cultures[0]);
            options.SupportedCultures = Cultures;
            options.SupportedUICultures = Cultures;
            options.RequestCultureProviders =
            [
                new CookieRequestCultureProvider(),
                new CustomRequestCultureProvider(context => Task.FromResult(FromAcceptLanguage(context.Request.Headers.AcceptLanguage))),
            ];
        });
        return services;
    }

    /// <summary>The first supported language in the browser's preference order.</summary>
    internal static ProviderCultureResult? FromAcceptLanguage(Microsoft.Extensions.Primitives.StringValues header)
    {
        if (!StringWithQualityHeaderValue.TryParseList(header, out var values)) return null;
        foreach (var value in values.OrderByDescending(v => v.Quality ?? 1))
        {
            string tag = value.Value.ToString();
            if (tag.StartsWith("zh", StringComparison.OrdinalIgnoreCase)) return new ProviderCultureResult("zh-TW");
            if (tag.StartsWith("en", StringComparison.OrdinalIgnoreCase)) return new ProviderCultureResult("en");
        }
        return null;
    }

    /// <summary>GET /culture?name=en&amp;returnUrl=/history: remembers the choice in a cookie and goes back (local URLs only).</summary>
    public static IEndpointRouteBuilder MapCultureEndpoint(this IEndpointRouteBuilder endpoints)
    {
        endpoints.MapGet("/culture", (string? name, string? returnUrl, HttpContext context) =>
        {
            if (name is not null && Cultures.Any(c => c.Name == name))
                context.Response.Cookies.Append(CookieRequestCultureProvider.DefaultCookieName,
                    CookieRequestCultureProvider.MakeCookieValue(new RequestCulture(name)),
                    new CookieOptions { Expires = DateTimeOffset.UtcNow.AddYears(1), IsEssential = true, SameSite = Microsoft.AspNetCore.Http.SameSiteMode.Lax, HttpOnly = true });
            return Results.LocalRedirect(IsLocal(returnUrl) ? returnUrl! : "/");
        });
        return endpoints;
    }

    /// <summary>
    /// A path on this site: "/" then not "/" or "\\", and no control characters anywhere (browsers drop tabs and line
    /// breaks, so "/\t/evil.example" is "//evil.example"; Results.LocalRedirect refuses it, which was a 500).
    /// The rule of ASP.NET Core's own IsLocalUrl, without its "~/" form.
    /// </summary>
    internal static bool IsLocal(string? url) =>
        !string.IsNullOrEmpty(url) && url[0] == '/' && (url.Length == 1 || (url[1] != '/' && url[1] != '\\')) && !url.Any(char.IsControl);
}
