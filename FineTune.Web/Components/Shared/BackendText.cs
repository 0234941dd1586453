using FineTune.Engine.Backend;
using FineTune.Web.Features.Settings;
using Microsoft.Extensions.Localization;

namespace FineTune.Web.Components.Shared;

/// <summary>
/// The compute backend for people, in the page's language ("GPU：NVIDIA H200，139.8 GB" / "CPU, 16 threads").
/// The engine's own <see cref="BackendInfo.Description"/> and <see cref="BackendInfo.Reason"/> are English log lines:
/// pages show them only behind a "details" toggle.
/// </summary>
public static class BackendText
{
    public static string Describe(IStringLocalizer localizer, BackendInfo backend) =>
        !backend.CanCompute ? localizer["Backend_None"]
        : backend.IsCuda ? localizer["Backend_Gpu", backend.GpuName ?? "CUDA", backend.GpuMemoryBytes is { } bytes ? SettingsAdvisor.Gigabytes(bytes) : "?"]
        : localizer["Backend_Cpu", Environment.ProcessorCount];
}
