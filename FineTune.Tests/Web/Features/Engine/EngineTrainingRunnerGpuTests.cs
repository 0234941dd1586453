using FineTune.Engine.Backend;
using FineTune.Engine.Hub;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Engine;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using FineTune.Web.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;

namespace FineTune.Tests.Web.Features.Engine;

/// <summary>The GPUs the queue gives a run become the engine job's device (one) or devices (data parallel).</summary>
public sealed class EngineTrainingRunnerGpuTests
{
    private static FineTune.Engine.Training.FineTuneJob Map(IReadOnlyList<int>? gpus)
    {
        using var services = new ServiceCollection().AddLogging().AddHttpClient().BuildServiceProvider();
        var folders = new LocalModelFolders(new DataPaths(Path.GetTempPath(), []));
        var downloads = new ModelDownloadService(services.GetRequiredService<IHttpClientFactory>(), new HubOptions(),
            NullLogger<ModelDownloadService>.Instance, NullLoggerFactory.Instance);
        var runner = new EngineTrainingRunner(new EngineModels(ComputeBackend.Initialize(), folders, downloads, NullLoggerFactory.Instance), NullLoggerFactory.Instance);
        var job = new TrainingJob(1, new TrainingSettings(), FineTune.Tests.Web.Features.Runs.RunStoreTests.Rows, Path.GetTempPath(), Gpus: gpus);
        return runner.ToFineTuneJob(job, TestFiles.Fixture("models/qwen2"));
    }

    [Fact]
    public void Two_gpus_make_a_data_parallel_job()
    {
        var job = Map([0, 1]);
        Assert.True(job.IsDataParallel);
        Assert.Equal([(DeviceType.CUDA, 0), (DeviceType.CUDA, 1)], job.Devices!.Select(d => (d.type, d.index)));
    }

    [Fact]
    public void One_gpu_is_the_jobs_device_and_none_leaves_the_backends()
    {
        var one = Map([1]);
        Assert.False(one.IsDataParallel);
        Assert.Equal((DeviceType.CUDA, 1), (one.Device!.type, one.Device.index));
        var none = Map(null);
        Assert.Null(none.Device);
        Assert.Null(none.Devices);
    }
}
