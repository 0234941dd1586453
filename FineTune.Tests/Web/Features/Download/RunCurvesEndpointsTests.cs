using System.IO.Compression;
using System.Net;
using FineTune.Engine.Training;
using FineTune.Tests.Training;
using FineTune.Tests.Web.Features.Runs;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using Microsoft.Extensions.DependencyInjection;

namespace FineTune.Tests.Web.Features.Download;

/// <summary>History's links to a run's curves: loss.csv and the TensorBoard event files beside it.</summary>
public sealed class RunCurvesEndpointsTests
{
    [Fact]
    public async Task Loss_csv_and_the_tensorboard_events_download_once_the_run_has_them()
    {
        using var app = new WebAppHost();
        var store = app.Services.GetRequiredService<RunStore>();
        var run = await store.CreateAsync(new TrainingSettings { Model = "Qwen/Qwen2.5-0.5B-Instruct" }, RunStoreTests.Rows, "faq.xlsx", null);
        Assert.Equal(HttpStatusCode.NotFound, (await app.Client.GetAsync($"/runs/{run.Id}/tensorboard.zip")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await app.Client.GetAsync($"/runs/{run.Id}/loss.csv")).StatusCode);

        string adapter = app.Services.GetRequiredService<ArtifactPackager>().AdapterDirectory(run.Id);
        var log = new TensorBoardLog(Path.Combine(adapter, TensorBoardLog.FolderName));
        log.Report(new TrainingProgress(1, 2, 0.5, Loss: 1.5, LearningRate: 1e-4));
        File.WriteAllText(Path.Combine(adapter, "loss.csv"), "step,epoch,loss,learning_rate,grad_norm,eval_loss\n1,0.5,1.5,0.0001,,\n");

        var csv = await app.Client.GetAsync($"/runs/{run.Id}/loss.csv");
        Assert.Equal(HttpStatusCode.OK, csv.StatusCode);
        Assert.StartsWith("step,epoch,loss", await csv.Content.ReadAsStringAsync());
        var zipResponse = await app.Client.GetAsync($"/runs/{run.Id}/tensorboard.zip");
        Assert.Equal(HttpStatusCode.OK, zipResponse.StatusCode);
        string unzipped = Directory.CreateTempSubdirectory("tb-zip-").FullName;
        try
        {
            using (var zip = new ZipArchive(await zipResponse.Content.ReadAsStreamAsync()))
                zip.ExtractToDirectory(unzipped);
            Assert.Equal([(1L, 1.5f)], TfEvents.Scalars(Path.Combine(unzipped, $"run{run.Id}"))["train/loss"]);
        }
        finally
        {
            Directory.Delete(unzipped, recursive: true);
        }
    }
}
