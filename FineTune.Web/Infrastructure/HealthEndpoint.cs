using FineTune.Engine.Backend;

namespace FineTune.Web.Infrastructure;

public static class HealthEndpoint
{
    /// <summary>GET /healthz: liveness plus the compute backend the engine chose and why.</summary>
    public static IEndpointRouteBuilder MapHealthEndpoint(this IEndpointRouteBuilder endpoints)
    {
        endpoints.MapGet("/healthz", (BackendInfo backend) => Results.Ok(new
        {
            // degraded: the app serves pages but cannot train (libtorch did not load); the reason says what to do.
            status = backend.CanCompute ? "ok" : "degraded",
            backend = new
            {
                device = backend.IsCuda ? "cuda" : "cpu",
                description = backend.Description,
                reason = backend.Reason,
                libtorch = backend.LibTorchSource,
                gpu = backend.GpuName,
                gpuMemoryBytes = backend.GpuMemoryBytes,
                canTrain = backend.CanCompute,
                unavailableReason = backend.UnavailableReason,
            },
        }));
        return endpoints;
    }
}
