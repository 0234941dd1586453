using System.Net;
using FineTune.Web.Features.Runs;
using Microsoft.Extensions.Localization;

namespace FineTune.Web.Infrastructure;

/// <summary>
/// Whether the data folder (run history database, runs, models) could be opened at start-up. When it could not (a
/// full or read-only disk, no permission), the app still starts and every page says so, instead of the process
/// aborting with a stack trace (seen: rc 134 when restarted on a full disk).
/// </summary>
public sealed class DataFolderStatus
{
    /// <summary>Why the data folder is unusable (the exception's message), or null when it is fine.</summary>
    public string? Problem { get; private set; }

    public string? Folder { get; private set; }

    public bool IsUsable => Problem is null;

    internal void Fail(string folder, string problem) => (Folder, Problem) = (folder, problem);
}

public static class DataFolderGuard
{
    /// <summary>While the data folder is unusable, pages answer 503 with what is wrong and what to do; /healthz and static files still work.</summary>
    public static WebApplication UseDataFolderGuard(this WebApplication app)
    {
        app.Use(async (context, next) =>
        {
            var status = context.RequestServices.GetRequiredService<DataFolderStatus>();
            var path = context.Request.Path;
            if (status.IsUsable || path.StartsWithSegments("/healthz") || path.StartsWithSegments("/_framework") || path.StartsWithSegments("/_content")
                || Path.HasExtension(path.Value))
            {
                await next(context);
                return;
            }
            var L = context.RequestServices.GetRequiredService<IStringLocalizer<SharedResource>>();
            string reason = L["RunFailure_" + RunFailure.Classify(status.Problem)];
            context.Response.StatusCode = StatusCodes.Status503ServiceUnavailable;
            context.Response.ContentType = "text/html; charset=utf-8";
            await context.Response.WriteAsync(
                $"""
                <!DOCTYPE html>
                <html lang="{WebUtility.HtmlEncode(System.Globalization.CultureInfo.CurrentUICulture.Name)}"><head><meta charset="utf-8"><title>{WebUtility.HtmlEncode(L["DataFolder_Title"])}</title></head>
                <body style="font-family: sans-serif; max-width: 40rem; margin: 3rem auto" data-testid="data-folder-problem">
                <h1>{WebUtility.HtmlEncode(L["DataFolder_Title"])}</h1>
                <p>{WebUtility.HtmlEncode(reason)}</p>
                <p>{WebUtility.HtmlEncode(L["DataFolder_Text", status.Folder ?? ""])}</p>
                <pre>{WebUtility.HtmlEncode(status.Problem)}</pre>
                </body></html>
                """);
        });
        return app;
    }
}
