using System.Globalization;
using Bunit;
using FineTune.Engine.Backend;
using FineTune.Engine.Hub;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Data;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Wizard;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Options;
using MudBlazor;
using MudBlazor.Services;
using TorchSharp;

namespace FineTune.Tests.Web.Components;

/// <summary>bUnit with MudBlazor, the app's zh-TW strings and real services over a temporary data folder.</summary>
public abstract class ComponentTestContext : BunitContext, IAsyncLifetime
{
    private bool _disposedAsync;

    protected RunTestServices Runs { get; } = new();
    protected WizardState State { get; } = new();
    protected ScriptedTrainingRunner Runner { get; } = new();
    protected RecordingChatGenerator Chat { get; } = new();
    protected RunQueue Queue { get; }
    protected DataImporter Importer { get; } = new(new ExcelTableReader(NullLogger<ExcelTableReader>.Instance));
    private readonly HttpClient _http = new();

    /// <summary>The machine's GPUs as the run queue's pool has them (none: the CPU backend); set before the first render that needs the pool.</summary>
    protected IReadOnlyList<GpuDevice> Gpus { get; set; } = [];

    /// <summary>Where ModelDownloadService downloads from: nothing listens on port 9 unless a test points it at a FakeHub
    /// (set before the first render that needs the service).</summary>
    protected HubOptions HubOptions { get; set; }

    /// <param name="backend">The backend the pages see; null: the CPU backend (set <see cref="Gpus"/> to a CUDA one's GPUs for the queue's pool).</param>
    protected ComponentTestContext(BackendInfo? backend = null)
    {
        CultureInfo.CurrentCulture = CultureInfo.CurrentUICulture = new CultureInfo("zh-TW");
        JSInterop.Mode = JSRuntimeMode.Loose;
        Services.AddMudServices();
        Services.AddLocalization(o => o.ResourcesPath = "Resources");
        Services.AddSingleton(backend ?? new BackendInfo(DeviceType.CPU, "CPU: 2 threads", "test backend", "nuget"));
        Services.AddSingleton(Options.Create(new FineTune.Web.Infrastructure.FineTuneOptions { DataDirectory = Runs.Paths.Root, MaxUploadMegabytes = 1 }));
        Services.AddSingleton(State);
        Services.AddSingleton(Importer);
        Services.AddSingleton(Runs.Paths);
        Services.AddSingleton(new LocalModelFolders(new FineTune.Web.Infrastructure.DataPaths(Runs.Paths.Root, [TestFiles.Fixture("models")])));
        Services.AddSingleton(Runs.Store);
        Services.AddSingleton(Runs.Notifier);
        Queue = new RunQueue(Runs.Store, Runs.Notifier, Runner, NullLogger<RunQueue>.Instance);
        Services.AddSingleton(Queue);
        Services.AddSingleton(_ => new GpuPool(Gpus));
        Services.AddSingleton(new ArtifactPackager(Runs.Store));
        Services.AddSingleton(sp => new FineTune.Web.Features.Learning.LearningCheckService(Runs.Contexts, Runs.Store, sp.GetRequiredService<FineTune.Web.Features.Chat.IChatGenerator>(),
            sp.GetRequiredService<ArtifactPackager>(), Runs.Notifier, Queue, NullLogger<FineTune.Web.Features.Learning.LearningCheckService>.Instance));
        Services.AddSingleton<FineTune.Web.Features.Chat.IChatGenerator>(Chat);
        Services.AddSingleton(provider => new GgufDownloads(provider.GetRequiredService<ArtifactPackager>(), Runs.Store));
        Services.AddSingleton<IGgufExporter, NoGgufExporter>();
        Services.AddSingleton(provider => new FineTune.Web.Infrastructure.ListeningAddresses(new LoopbackServer(),
            provider.GetRequiredService<IOptions<FineTune.Web.Infrastructure.FineTuneOptions>>()));
        Services.AddSingleton(new FineTune.Web.Features.Engine.TokenCounter(NullLogger<FineTune.Web.Features.Engine.TokenCounter>.Instance));
        Services.AddScoped(sp => new WizardDraftStore(Runs.Contexts, Importer, sp.GetRequiredService<FineTune.Web.Features.Engine.TokenCounter>(), NullLogger<WizardDraftStore>.Instance));
        HubOptions = new HubOptions { Endpoint = "http://127.0.0.1:9", CacheFolder = Path.Combine(Runs.Paths.Root, "hub"), Token = null, Offline = false, Retries = 0, RetryDelay = TimeSpan.Zero, ProgressInterval = TimeSpan.Zero };
        Services.AddSingleton(_ => new ModelDownloadService(new SingleClientFactory(_http), HubOptions, NullLogger<ModelDownloadService>.Instance, NullLoggerFactory.Instance));
        Services.AddSingleton(sp => new FineTune.Web.Features.Engine.TrainingTimeService(new FineTune.Web.Features.Engine.EngineModels(
            sp.GetRequiredService<BackendInfo>(), sp.GetRequiredService<LocalModelFolders>(), sp.GetRequiredService<ModelDownloadService>(), NullLoggerFactory.Instance),
            NullLoggerFactory.Instance));
        Render<MudPopoverProvider>();
    }

    public Task InitializeAsync() => Task.CompletedTask;

    /// <summary>MudBlazor's services are only IAsyncDisposable: xUnit calls this before Dispose.</summary>
    async Task IAsyncLifetime.DisposeAsync()
    {
        await base.DisposeAsync();
        Queue.Dispose();
        Runs.Dispose();
        _http.Dispose();
        _disposedAsync = true;
    }

    protected override void Dispose(bool disposing)
    {
        if (!_disposedAsync) base.Dispose(disposing);
    }
}

/// <summary>Component tests do not export GGUF files (the engine's exporter has its own tests).</summary>
internal sealed class NoGgufExporter : IGgufExporter
{
    public Task<string> ExportAsync(int runId, string type, double temperature, double topP, CancellationToken cancellationToken) =>
        throw new NotSupportedException("No GGUF export in component tests.");
}

/// <summary>A server listening on loopback only, for components that ask whether the app is exposed.</summary>
internal sealed class LoopbackServer : Microsoft.AspNetCore.Hosting.Server.IServer
{
    public Microsoft.AspNetCore.Http.Features.IFeatureCollection Features { get; } = new Microsoft.AspNetCore.Http.Features.FeatureCollection();

    public Task StartAsync<TContext>(Microsoft.AspNetCore.Hosting.Server.IHttpApplication<TContext> application, CancellationToken cancellationToken) where TContext : notnull => Task.CompletedTask;

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;

    public void Dispose() { }
}
