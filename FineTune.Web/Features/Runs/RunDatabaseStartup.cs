using FineTune.Web.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace FineTune.Web.Features.Runs;

/// <summary>
/// Creates the data folder, applies migrations and marks runs a stopped process left 'training' as interrupted.
/// A data folder that cannot be written (full disk, read-only, no permission) is logged in one line and reported on
/// every page (<see cref="DataFolderStatus"/>); the app keeps running so the user sees why.
/// </summary>
internal sealed class RunDatabaseStartup(IDbContextFactory<RunDbContext> contexts, RunStore store, DataPaths paths, DataFolderStatus status,
    ILogger<RunDatabaseStartup> logger) : IHostedService
{
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        try
        {
            Directory.CreateDirectory(paths.Root);
            Directory.CreateDirectory(paths.Runs);
            await using (var db = await contexts.CreateDbContextAsync(cancellationToken))
                await db.Database.MigrateAsync(cancellationToken);
            await store.MarkInterruptedAsync(cancellationToken);
            store.RemoveUnfinishedStarts();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or System.Data.Common.DbException or DbUpdateException or InvalidOperationException)
        {
            string problem = RunFailure.Message(e);
            status.Fail(paths.Root, problem);
            logger.LogCritical("The data folder {Folder} cannot be used: {Problem}. Pages say so until it is fixed and FineTune is restarted.", paths.Root, problem);
        }
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
