using FineTune.Engine.Backend;
using FineTune.Engine.Hub;
using FineTune.Web.Features.Chat;
using FineTune.Web.Features.Data;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.Engine;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Wizard;
using Microsoft.AspNetCore.Http.Features;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.DependencyInjection.Extensions;
using MudBlazor.Services;

namespace FineTune.Web.Infrastructure;

public static class ApplicationServices
{
    /// <summary>Everything the app needs, registered in one place (Program.cs stays short).</summary>
    public static WebApplicationBuilder AddApplicationServices(this WebApplicationBuilder builder)
    {
        builder.Services.AddOptions<FineTuneOptions>()
            .BindConfiguration(FineTuneOptions.Section)
            .ValidateDataAnnotations()
            .ValidateOnStart();

        builder.Services.AddRazorComponents().AddInteractiveServerComponents();
        builder.Services.AddMemoryReclaim(); // a closed tab's upload goes back to the OS
        builder.Services.AddMudServices();
        builder.Services.AddSignalR();
        builder.Services.AddAppLocalization();
        // Write Chinese text as is, not as &#x...; entities (pages a third of the size, readable source).
        builder.Services.Configure<Microsoft.Extensions.WebEncoders.WebEncoderOptions>(o =>
            o.TextEncoderSettings = new System.Text.Encodings.Web.TextEncoderSettings(System.Text.Unicode.UnicodeRanges.All));
        builder.Services.AddAccessGate();
        builder.Services.AddDataProtectionKeysInDataFolder();

        // Uploads: the configured limit, also for plain HTTP forms (Blazor's file upload streams through the circuit).
        long maxUpload = builder.Configuration.GetSection(FineTuneOptions.Section).Get<FineTuneOptions>()?.MaxUploadBytes ?? new FineTuneOptions().MaxUploadBytes;
        builder.Services.Configure<FormOptions>(o => o.MultipartBodyLengthLimit = maxUpload);

        // The compute backend is chosen once, before any TorchSharp call, and reported in the log and on /healthz.
        builder.Services.AddSingleton(provider =>
        {
            FineTune.Engine.Kernels.CudaKernels.CacheFolder = provider.GetRequiredService<DataPaths>().Kernels; // compiled kernels live with the data
            return ComputeBackend.Initialize(provider.GetRequiredService<ILoggerFactory>().CreateLogger("FineTune.Backend"));
        });
        builder.Services.AddHostedService<BackendStartup>();
        builder.Services.AddAppHealthChecks();

        builder.Services.AddSingleton<DataPaths>();
        builder.Services.AddSingleton<DataFolderStatus>();
        // Started from the build output (bin/…, not a publish) outside the project folder, the framework and package
        // files (_content/…, _framework/…) are found through the build's static web assets manifest; without it every
        // one of them was a 500.
        if (File.Exists(Path.Combine(AppContext.BaseDirectory, builder.Environment.ApplicationName + ".staticwebassets.runtime.json")))
            builder.WebHost.UseStaticWebAssets();
        builder.Services.AddSingleton<ExcelTableReader>();
        builder.Services.AddSingleton<DataImporter>();
        // Roots apply only when the app is reachable from other machines (token mode); on localhost any folder opens.
        builder.Services.AddSingleton(provider => new LocalModelFolders(provider.GetRequiredService<DataPaths>(),
            () => provider.GetRequiredService<ListeningAddresses>().IsExposed));
        builder.Services.AddScoped<WizardState>();
        builder.Services.AddScoped<WizardDraftStore>();

        // Run history (SQLite in the data folder) and the one-at-a-time training queue.
        builder.Services.AddDbContextFactory<RunDbContext>((provider, options) =>
            options.UseSqlite($"Data Source={provider.GetRequiredService<DataPaths>().Database}"));
        builder.Services.AddSingleton<RunStore>();
        builder.Services.AddSingleton<RunNotifier>();
        builder.Services.AddSingleton<ArtifactPackager>();
        builder.Services.AddHostedService<RunDatabaseStartup>();
        builder.Services.AddSingleton(provider => GpuPool.For(provider.GetRequiredService<BackendInfo>()));
        builder.Services.AddSingleton<RunQueue>();
        builder.Services.AddHostedService(provider => provider.GetRequiredService<RunQueue>());
        builder.Services.AddHostedService<TrainingHubForwarder>();
        builder.Services.AddSingleton<FineTune.Web.Features.Learning.LearningCheckService>();
        builder.Services.AddHostedService(provider => provider.GetRequiredService<FineTune.Web.Features.Learning.LearningCheckService>());

        // The engine behind small interfaces: training, generation, merging.
        builder.Services.AddHttpClient();
        builder.Services.TryAddSingleton(_ => new HubOptions());
        builder.Services.AddSingleton<ModelDownloadService>();
        builder.Services.AddSingleton<EngineModels>();
        builder.Services.AddSingleton<TokenCounter>();
        builder.Services.AddSingleton<TrainingTimeService>();
        builder.Services.TryAddSingleton<ITrainingRunner, EngineTrainingRunner>();
        builder.Services.TryAddSingleton<IChatGenerator, EngineChatGenerator>();
        builder.Services.TryAddSingleton<IModelMerger, EngineModelMerger>();
        builder.Services.AddSingleton<GgufDownloads>();
        builder.Services.AddSingleton<FineTune.Web.Features.OpenAi.OpenAiModels>();
        builder.Services.TryAddSingleton<IGgufExporter, EngineGgufExporter>();
        return builder;
    }
}

/// <summary>Chooses the compute backend at start-up, so the first request does not pay for it.</summary>
internal sealed class BackendStartup(IServiceProvider services) : IHostedService
{
    public Task StartAsync(CancellationToken cancellationToken)
    {
        services.GetRequiredService<BackendInfo>();
        return Task.CompletedTask;
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
