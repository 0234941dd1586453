using System.Text.Json;
using FineTune.Engine.Backend;
using FineTune.Engine.Hub;
using FineTune.Web.Features.Runs;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.EntityFrameworkCore;
using Microsoft.Extensions.Diagnostics.HealthChecks;

namespace FineTune.Web.Infrastructure;

/// <summary>
/// GET /healthz on ASP.NET's health checks: the database answers, the data folder takes writes, the disks have room,
/// and the compute backend the engine chose. 200 when healthy or degraded, 503 when unhealthy (Docker's HEALTHCHECK
/// runs the app's <c>healthcheck</c> command, which fails on anything but 2xx). The body keeps the shape it had
/// before the checks, <c>{"status":"ok","backend":{...}}</c>, with each check added under "checks".
/// </summary>
public static class HealthChecks
{
    public const string Path = "/healthz";

    public static IServiceCollection AddAppHealthChecks(this IServiceCollection services)
    {
        services.AddHealthChecks()
            // The run history's tables answer, not only the file: a query, not just a connection.
            .AddDbContextCheck<RunDbContext>("database", HealthStatus.Unhealthy,
                customTestQuery: async (db, cancellationToken) => { await db.Runs.AnyAsync(cancellationToken); return true; })
            .AddCheck<DataFolderCheck>("data-folder")
            .AddCheck<FreeDiskCheck>("disk")
            .AddCheck<ComputeBackendCheck>("backend")
            .AddCheck<ProcessMemoryCheck>("memory");
        return services;
    }

    public static IEndpointRouteBuilder MapHealthChecks(this IEndpointRouteBuilder endpoints)
    {
        endpoints.MapHealthChecks(Path, new HealthCheckOptions { ResponseWriter = WriteAsync });
        return endpoints;
    }

    /// <summary>"ok" (as before the checks), "degraded" or "unhealthy".</summary>
    public static string StatusName(HealthStatus status) => status switch
    {
        HealthStatus.Healthy => "ok",
        HealthStatus.Degraded => "degraded",
        _ => "unhealthy",
    };

    private static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web);

    private static Task WriteAsync(HttpContext context, HealthReport report)
    {
        context.Response.ContentType = "application/json; charset=utf-8";
        var body = new Dictionary<string, object?>
        {
            ["status"] = StatusName(report.Status),
            ["backend"] = report.Entries.TryGetValue("backend", out var backend) ? backend.Data : null,
            ["checks"] = report.Entries.ToDictionary(e => e.Key, e => (object)new
            {
                status = StatusName(e.Value.Status),
                description = e.Value.Description ?? e.Value.Exception?.Message,
                durationMs = Math.Round(e.Value.Duration.TotalMilliseconds, 1),
                data = e.Value.Data.Count > 0 ? e.Value.Data : null,
            }),
        };
        return context.Response.WriteAsync(JsonSerializer.Serialize(body, Json));
    }
}

/// <summary>The data folder takes a write (a file created, synced and removed): runs, uploads and the database need it.</summary>
internal sealed class DataFolderCheck(DataPaths paths) : IHealthCheck
{
    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var data = new Dictionary<string, object> { ["path"] = paths.Root };
        string probe = System.IO.Path.Combine(paths.Root, $".health-{Guid.NewGuid():N}");
        try
        {
            await using (var stream = new FileStream(probe, FileMode.CreateNew, FileAccess.Write, FileShare.None, 1, FileOptions.WriteThrough))
                await stream.WriteAsync("ok"u8.ToArray(), cancellationToken);
            File.Delete(probe);
            return HealthCheckResult.Healthy($"{paths.Root} is writable", data);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            return new HealthCheckResult(context.Registration.FailureStatus,
                $"Cannot write to the data folder {paths.Root}: {e.Message}. Check that it exists, is writable by this user and the disk is not full.",
                e, data);
        }
    }
}

/// <summary>
/// Room left where runs (the data folder) and downloaded models (the Hugging Face cache) go. Degraded under 2 GiB:
/// the smallest preset model no longer fits; unhealthy under 256 MiB: a checkpoint or the database write would fail.
/// </summary>
internal sealed class FreeDiskCheck(DataPaths paths, HubOptions hub) : IHealthCheck
{
    public const long DegradedBelowBytes = 2L << 30;
    public const long UnhealthyBelowBytes = 256L << 20;

    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var data = new Dictionary<string, object>();
        var worst = HealthStatus.Healthy;
        var notes = new List<string>();
        foreach (var (name, folder) in new[] { ("data", paths.Root), ("hubCache", hub.CacheFolder) })
        {
            if (FreeBytes(folder) is not { } free) continue;
            data[$"{name}FreeBytes"] = free;
            var status = free < UnhealthyBelowBytes ? HealthStatus.Unhealthy : free < DegradedBelowBytes ? HealthStatus.Degraded : HealthStatus.Healthy;
            if (status < worst) worst = status;
            notes.Add($"{free / (double)(1L << 30):0.0} GiB free for {folder}");
        }
        string description = string.Join("; ", notes);
        return Task.FromResult(worst == HealthStatus.Healthy
            ? HealthCheckResult.Healthy(description, data)
            : new HealthCheckResult(worst, description + ". Free some space: runs, checkpoints and model downloads need it.", data: data));
    }

    /// <summary>Free space of the drive holding the folder (or its nearest existing parent); null where it cannot be read.</summary>
    internal static long? FreeBytes(string folder)
    {
        try
        {
            var dir = new DirectoryInfo(System.IO.Path.GetFullPath(folder));
            while (dir is { Exists: false }) dir = dir.Parent;
            return dir is null ? null : new DriveInfo(dir.FullName).AvailableFreeSpace;
        }
        catch (Exception e) when (e is IOException or ArgumentException or UnauthorizedAccessException)
        {
            return null;
        }
    }
}

/// <summary>
/// The compute backend the engine chose and why, kept in the response under "backend". Degraded when it could not be
/// chosen (e.g. TorchSharp's native library did not load): the app serves pages and history, but cannot train.
/// </summary>
internal sealed class ComputeBackendCheck(IServiceProvider services) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        BackendInfo backend;
        try
        {
            backend = services.GetRequiredService<BackendInfo>();
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            return Task.FromResult(HealthCheckResult.Degraded($"Training is unavailable: the compute backend could not start ({e.Message}).", e));
        }
        var data = new Dictionary<string, object?>
        {
            ["device"] = backend.IsCuda ? "cuda" : "cpu",
            ["description"] = backend.Description,
            ["reason"] = backend.Reason,
            ["libtorch"] = backend.LibTorchSource,
            ["gpu"] = backend.GpuName,
            ["gpuMemoryBytes"] = backend.GpuMemoryBytes,
            ["kernels"] = backend.Kernels,
            ["cudaGraphs"] = backend.CudaGraphs,
            ["flashAttention"] = backend.FlashAttention,
            ["canTrain"] = backend.CanCompute,
            ["unavailableReason"] = backend.UnavailableReason,
        };
        // libtorch did not load (e.g. a C++ runtime older than GCC 13): pages work, training does not; the reason says what to do.
        return Task.FromResult(backend.UnavailableReason is { } reason
            ? HealthCheckResult.Degraded(reason, data: data!)
            : HealthCheckResult.Healthy(backend.Description, data!));
    }
}
