using System.Net;
using System.Security.Claims;
using System.Security.Cryptography;
using System.Text;
using System.Threading.RateLimiting;
using Microsoft.AspNetCore.Antiforgery;
using Microsoft.AspNetCore.Authentication;
using Microsoft.AspNetCore.Authentication.Cookies;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.AspNetCore.RateLimiting;
using Microsoft.Extensions.Options;

namespace FineTune.Web.Infrastructure;

/// <summary>
/// Local by default (appsettings: http://localhost:5080). When the app listens on any non-loopback address,
/// every request needs a sign-in with FineTune:AccessToken (cookie); without a configured token it refuses to
/// start rather than expose training and files to the network.
/// </summary>
public static class AccessGate
{
    public const string LoginPath = "/login";
    internal const int LoginAttemptsPerMinute = 10;
    private const string LoginRateLimit = "login";

    public static IServiceCollection AddAccessGate(this IServiceCollection services)
    {
        services.AddAuthentication(CookieAuthenticationDefaults.AuthenticationScheme)
            .AddCookie(options =>
            {
                options.LoginPath = LoginPath;
                options.Cookie.Name = "finetune_auth";
                options.Cookie.HttpOnly = true;
                options.Cookie.SameSite = SameSiteMode.Strict;
                options.ExpireTimeSpan = TimeSpan.FromDays(7);
                options.SlidingExpiration = true;
            });
        services.AddAuthorization();
        // Guessing the token: 10 sign-in attempts per minute per address, then 429 until the minute is over
        // (before: 200 wrong tokens in 1.4 s, no delay, no log line).
        services.AddRateLimiter(options =>
        {
            options.RejectionStatusCode = StatusCodes.Status429TooManyRequests;
            options.AddPolicy(LoginRateLimit, context => RateLimitPartition.GetFixedWindowLimiter(
                context.Connection.RemoteIpAddress?.ToString() ?? "unknown",
                _ => new FixedWindowRateLimiterOptions { PermitLimit = LoginAttemptsPerMinute, Window = TimeSpan.FromMinutes(1), QueueLimit = 0 }));
            options.OnRejected = async (context, cancellationToken) =>
            {
                context.HttpContext.Response.Headers.RetryAfter = "60";
                context.HttpContext.RequestServices.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(AccessGate))
                    .LogWarning("Sign-in attempts from {Address} are refused for a minute: more than {Limit} in one", context.HttpContext.Connection.RemoteIpAddress, LoginAttemptsPerMinute);
                // A body, so the status-code pages do not re-execute the request as a page (that answered 401).
                await context.HttpContext.Response.WriteAsync("Too many sign-in attempts; wait a minute and try again.", cancellationToken);
            };
        });
        services.AddSingleton<ListeningAddresses>();
        services.AddHostedService<ListeningAddresses.StartupCheck>();
        return services;
    }

    public static WebApplication UseAccessGate(this WebApplication app)
    {
        app.UseAuthentication();
        app.Use(async (context, next) =>
        {
            var addresses = context.RequestServices.GetRequiredService<ListeningAddresses>();
            if (!addresses.IsExposed || IsOpenPath(context.Request.Path) || context.User.Identity?.IsAuthenticated == true)
            {
                await next(context);
                return;
            }
            // The OpenAI-compatible API: programs send the same token as "Authorization: Bearer <token>".
            if (context.Request.Path.StartsWithSegments("/v1"))
            {
                string authorization = context.Request.Headers.Authorization.ToString();
                var token = context.RequestServices.GetRequiredService<IOptions<FineTuneOptions>>().Value.AccessToken;
                if (authorization.StartsWith("Bearer ", StringComparison.Ordinal) && Matches(authorization["Bearer ".Length..].Trim(), token))
                {
                    await next(context);
                    return;
                }
                context.Response.StatusCode = StatusCodes.Status401Unauthorized;
                await context.Response.WriteAsJsonAsync(new { error = new { message = "Send the app's access token as 'Authorization: Bearer <token>'.", type = "invalid_request_error", code = "invalid_api_key" } });
                return;
            }
            if (HttpMethods.IsGet(context.Request.Method) && !context.Request.Path.StartsWithSegments("/hubs") && !context.Request.Path.StartsWithSegments("/_blazor"))
                context.Response.Redirect($"{LoginPath}?returnUrl={Uri.EscapeDataString(SafeReturnUrl(context.Request.PathBase + context.Request.Path + context.Request.QueryString))}");
            else
                context.Response.StatusCode = StatusCodes.Status401Unauthorized;
        });
        app.UseAuthorization();
        app.UseRateLimiter();

        app.MapPost("/auth/login", async (HttpContext context, IOptions<FineTuneOptions> options, IAntiforgery antiforgery, ILoggerFactory loggers) =>
        {
            if (!context.Request.HasFormContentType) return Results.BadRequest("Sign in with the form at /login.");
            if (!await antiforgery.IsRequestValidAsync(context)) return Results.BadRequest("The sign-in form expired; open /login again.");
            var form = await context.Request.ReadFormAsync();
            string returnUrl = SafeReturnUrl(form["returnUrl"].ToString());
            if (!Matches(form["token"].ToString(), options.Value.AccessToken))
            {
                // Logged without the typed token: a log is read by more people than the token is meant for.
                loggers.CreateLogger(typeof(AccessGate)).LogWarning("Failed sign-in from {Address}", context.Connection.RemoteIpAddress);
                return Results.LocalRedirect($"{LoginPath}?failed=1&returnUrl={Uri.EscapeDataString(returnUrl)}");
            }
            var identity = new ClaimsIdentity([new Claim(ClaimTypes.Name, "owner")], CookieAuthenticationDefaults.AuthenticationScheme);
            await context.SignInAsync(CookieAuthenticationDefaults.AuthenticationScheme, new ClaimsPrincipal(identity));
            return Results.LocalRedirect(returnUrl);
        }).DisableAntiforgery() // validated in the handler above, which reads the form itself
          .RequireRateLimiting(LoginRateLimit);
        app.MapPost("/auth/logout", async (HttpContext context) =>
        {
            await context.SignOutAsync(CookieAuthenticationDefaults.AuthenticationScheme);
            return Results.LocalRedirect(LoginPath);
        }).DisableAntiforgery();
        return app;
    }

    /// <summary>Paths reachable without signing in: the login form and what it needs, and the health check.</summary>
    private static bool IsOpenPath(PathString path) =>
        path.StartsWithSegments(LoginPath) || path.StartsWithSegments("/auth/login") || path.StartsWithSegments("/healthz")
        || path.StartsWithSegments("/culture") || path.StartsWithSegments("/_content") || path.StartsWithSegments("/_framework")
        || path.Value is "/app.css" or "/favicon.ico" || (path.Value?.EndsWith(".css", StringComparison.Ordinal) ?? false);

    /// <summary>
    /// Where to go after signing in: a local URL (else "/"), without any token-like query parameter, so a token typed
    /// or pasted into a URL never travels on in a redirect, the browser history or a log.
    /// </summary>
    internal static string SafeReturnUrl(string? url)
    {
        if (!Localization.IsLocal(url)) return "/";
        int query = url!.IndexOf('?', StringComparison.Ordinal);
        if (query < 0) return url;
        var kept = url[(query + 1)..].Split('&', StringSplitOptions.RemoveEmptyEntries)
            .Where(pair => !IsTokenParameter(Uri.UnescapeDataString(pair.Split('=')[0])));
        string rest = string.Join('&', kept);
        return rest.Length == 0 ? url[..query] : $"{url[..query]}?{rest}";
    }

    private static bool IsTokenParameter(string name) =>
        name.Contains("token", StringComparison.OrdinalIgnoreCase) || name.Equals("password", StringComparison.OrdinalIgnoreCase);

    /// <summary>Constant-time comparison of the typed token with the configured one.</summary>
    internal static bool Matches(string typed, string? configured) =>
        !string.IsNullOrEmpty(configured)
        && CryptographicOperations.FixedTimeEquals(SHA256.HashData(Encoding.UTF8.GetBytes(typed)), SHA256.HashData(Encoding.UTF8.GetBytes(configured)));

    /// <summary>True when a URL's host is not a loopback address ("0.0.0.0", "*", "+", a LAN address or a name other than localhost).</summary>
    internal static bool IsExposedAddress(string url)
    {
        string host = url;
        int scheme = host.IndexOf("://", StringComparison.Ordinal);
        if (scheme >= 0) host = host[(scheme + 3)..];
        int slash = host.IndexOf('/');
        if (slash >= 0) host = host[..slash];
        if (host.StartsWith('['))
            host = host[1..host.IndexOf(']')];
        else if (host.LastIndexOf(':') is int colon and > 0)
            host = host[..colon];
        if (host.Equals("localhost", StringComparison.OrdinalIgnoreCase)) return false;
        return !(IPAddress.TryParse(host, out var ip) && IPAddress.IsLoopback(ip));
    }
}

/// <summary>Where Kestrel listens, read once the server has started; and whether that needs the access token.</summary>
public sealed class ListeningAddresses(IServer server, IOptions<FineTuneOptions> options)
{
    private bool? _exposed;

    public bool IsExposed => _exposed ??= Compute();

    private bool Compute()
    {
        var addresses = server.Features.Get<IServerAddressesFeature>()?.Addresses ?? [];
        bool exposed = addresses.Any(AccessGate.IsExposedAddress);
        if (exposed && string.IsNullOrEmpty(options.Value.AccessToken))
            throw new InvalidOperationException(
                $"FineTune listens on {string.Join(", ", addresses)}, reachable from other machines, but FineTune:AccessToken is not set. " +
                "Set it (environment variable FineTune__AccessToken) or listen on http://localhost:5080 only.");
        return exposed;
    }

    /// <summary>Checks at start-up so a misconfiguration stops the app instead of failing every request.</summary>
    internal sealed class StartupCheck(ListeningAddresses addresses, IHostApplicationLifetime lifetime, ILogger<StartupCheck> logger) : IHostedService
    {
        public Task StartAsync(CancellationToken cancellationToken)
        {
            lifetime.ApplicationStarted.Register(() =>
            {
                try
                {
                    if (addresses.IsExposed) logger.LogInformation("Listening beyond this machine: sign-in with FineTune:AccessToken is required");
                }
                catch (InvalidOperationException e)
                {
                    logger.LogCritical("{Problem}", e.Message);
                    Environment.ExitCode = 1; // a refused start is a failure for scripts and container supervisors
                    lifetime.StopApplication();
                }
            });
            return Task.CompletedTask;
        }

        public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
    }
}
