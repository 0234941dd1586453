using System.Security.Cryptography;

namespace FineTune.Web.Features.Wizard;

/// <summary>
/// A random id per browser in a long-lived cookie: the key of the browser's wizard draft. It names a browser, not a
/// person (no sign-in is involved) and carries nothing else.
/// </summary>
public static class BrowserIdentity
{
    public const string CookieName = "finetune_browser";

    /// <summary>Gives every page request a browser id, setting the cookie on the first one.</summary>
    public static WebApplication UseBrowserIdentity(this WebApplication app)
    {
        app.Use(async (context, next) =>
        {
            if (!IsValid(context.Request.Cookies[CookieName]))
            {
                string id = Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(16));
                context.Items[CookieName] = id;
                context.Response.Cookies.Append(CookieName, id, new CookieOptions
                {
                    Expires = DateTimeOffset.UtcNow.AddYears(1), HttpOnly = true, IsEssential = true, SameSite = SameSiteMode.Lax,
                });
            }
            await next(context);
        });
        return app;
    }

    /// <summary>The id of the browser making this request (set by <see cref="UseBrowserIdentity"/>).</summary>
    public static string? Of(HttpContext context) =>
        context.Items[CookieName] as string ?? (context.Request.Cookies[CookieName] is { } id && IsValid(id) ? id : null);

    private static bool IsValid(string? id) => id is { Length: 32 } && id.All(char.IsAsciiHexDigitLower);
}
