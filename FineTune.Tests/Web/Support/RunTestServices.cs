using FineTune.Web.Features.Runs;
using FineTune.Web.Infrastructure;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;

namespace FineTune.Tests.Web.Support;

/// <summary>A real SQLite run store in a temporary data folder (migrations applied), deleted on Dispose.</summary>
public sealed class RunTestServices : IDisposable
{
    private readonly ServiceProvider _provider;

    public RunTestServices()
    {
        Paths = new DataPaths(Directory.CreateTempSubdirectory("finetune-runs-").FullName);
        var services = new ServiceCollection();
        services.AddLogging();
        services.AddSingleton(Paths);
        services.AddDbContextFactory<RunDbContext>(o => o.UseSqlite($"Data Source={Paths.Database};Pooling=False"));
        _provider = services.BuildServiceProvider();
        Contexts = _provider.GetRequiredService<IDbContextFactory<RunDbContext>>();
        Store = new RunStore(Contexts, Paths, NullLogger<RunStore>.Instance);
        Directory.CreateDirectory(Paths.Runs);
        using var db = Contexts.CreateDbContext();
        db.Database.Migrate();
    }

    public DataPaths Paths { get; }
    public IDbContextFactory<RunDbContext> Contexts { get; }
    public RunStore Store { get; }
    public RunNotifier Notifier { get; } = new(NullLogger<RunNotifier>.Instance);

    public void Dispose()
    {
        _provider.Dispose();
        Directory.Delete(Paths.Root, recursive: true);
    }
}
