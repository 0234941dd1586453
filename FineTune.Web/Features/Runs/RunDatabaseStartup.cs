using FineTune.Web.Infrastructure;
using Microsoft.EntityFrameworkCore;

namespace FineTune.Web.Features.Runs;

/// <summary>Creates the data folder, applies migrations and marks runs a stopped process left 'training' as interrupted.</summary>
internal sealed class RunDatabaseStartup(IDbContextFactory<RunDbContext> contexts, RunStore store, DataPaths paths) : IHostedService
{
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        Directory.CreateDirectory(paths.Root);
        Directory.CreateDirectory(paths.Runs);
        await using (var db = await contexts.CreateDbContextAsync(cancellationToken))
            await db.Database.MigrateAsync(cancellationToken);
        await store.MarkInterruptedAsync(cancellationToken);
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
