using FineTune.Web;
using FineTune.Web.Components;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.OpenAi;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Wizard;
using FineTune.Web.Infrastructure;

// Headless commands (generate, train) run without the web server.
if (HeadlessCommands.TryRun(args, out int exitCode))
    return exitCode;

var builder = WebApplication.CreateBuilder(args);
builder.AddApplicationServices();

var app = builder.Build();

if (!app.Environment.IsDevelopment())
{
    app.UseExceptionHandler("/Error", createScopeForErrors: true);
}
app.UseStatusCodePagesWithReExecute("/not-found", createScopeForStatusCodePages: true);
app.UseRequestLocalization();
app.UseAccessGate();
app.UseBrowserIdentity();
app.UseDataFolderGuard();
app.UseAntiforgery();

app.MapStaticAssets();
app.MapHealthChecks();
app.MapCultureEndpoint();
app.MapDownloadEndpoints();
app.MapOpenAiEndpoints();
app.MapHub<TrainingHub>(TrainingHub.Path);
app.MapRazorComponents<App>()
    .AddInteractiveServerRenderMode();

app.Run();
return Environment.ExitCode;

/// <summary>The web app's entry point, visible to tests (WebApplicationFactory).</summary>
public partial class Program;
