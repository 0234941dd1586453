using System.IO.Compression;
using System.Net;
using FineTune.Tests.Web.Features.Runs;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using Microsoft.Extensions.DependencyInjection;

namespace FineTune.Tests.Web.Features.Download;

public sealed class ArtifactPackagerTests : IDisposable
{
    private readonly RunTestServices _services = new();

    public void Dispose() => _services.Dispose();

    private async Task<int> FinishedRunAsync(RunStore store)
    {
        var run = await store.CreateAsync(new TrainingSettings { Model = "Qwen/Qwen2.5-0.5B-Instruct" }, RunStoreTests.Rows, "faq.xlsx", null);
        await store.AddMetricAsync(new RunMetric { RunId = run.Id, Step = 1, Epoch = 0.5, Loss = 2.25, LearningRate = 2e-4, At = DateTime.UtcNow });
        await store.AddMetricAsync(new RunMetric { RunId = run.Id, Step = 2, Epoch = 1, Loss = 1.5, EvalLoss = 1.75, At = DateTime.UtcNow });
        string adapter = Path.Combine(store.RunDirectory(run.Id), ArtifactPackager.AdapterFolder);
        Directory.CreateDirectory(adapter);
        File.WriteAllText(Path.Combine(adapter, "adapter_config.json"), "{\"peft_type\": \"LORA\", \"r\": 16}");
        File.WriteAllBytes(Path.Combine(adapter, "adapter_model.safetensors"), [8, 0, 0, 0, 0, 0, 0, 0, .. "{}      "u8.ToArray()]);
        await store.SetStatusAsync(run.Id, RunStatus.Completed);
        return run.Id;
    }

    [Fact]
    public async Task The_adapter_zip_holds_the_peft_files_a_model_card_the_loss_curve_and_the_settings()
    {
        var packager = new ArtifactPackager(_services.Store);
        int id = await FinishedRunAsync(_services.Store);

        string zipPath = await packager.AdapterZipAsync(id);

        using var zip = ZipFile.OpenRead(zipPath);
        Assert.Equal(new[] { "README.md", "adapter_config.json", "adapter_model.safetensors", "loss.csv", "settings.json" },
            zip.Entries.Select(e => e.FullName).Order(StringComparer.Ordinal));
        string Read(string name) { using var r = new StreamReader(zip.GetEntry(name)!.Open()); return r.ReadToEnd(); }
        Assert.Equal("{\"peft_type\": \"LORA\", \"r\": 16}", Read("adapter_config.json"));
        Assert.Equal("step,epoch,loss,eval_loss,learning_rate\n1,0.5,2.25,,0.0002\n2,1,1.5,1.75,\n", Read("loss.csv"));
        string card = Read("README.md");
        Assert.StartsWith("---\nbase_model: Qwen/Qwen2.5-0.5B-Instruct\nlibrary_name: peft\n", card);
        Assert.Contains("| LoRA r / alpha / dropout | 16 / 32 / 0.05 |", card);
        Assert.Equal(16, TrainingSettings.FromJson(Read("settings.json")).LoraR);
    }

    [Fact]
    public async Task Files_the_trainer_wrote_are_not_added_twice()
    {
        var packager = new ArtifactPackager(_services.Store);
        int id = await FinishedRunAsync(_services.Store);
        string adapter = packager.AdapterDirectory(id);
        File.WriteAllText(Path.Combine(adapter, "loss.csv"), "step,loss\n1,2.0\n");
        File.WriteAllText(Path.Combine(adapter, "README.md"), "engine card");

        using var zip = ZipFile.OpenRead(await packager.AdapterZipAsync(id));
        var names = zip.Entries.Select(e => e.FullName).ToArray();
        Assert.Equal(names.Distinct().Count(), names.Length);
        using var reader = new StreamReader(zip.GetEntry("loss.csv")!.Open());
        Assert.Equal("step,loss\n1,2.0\n", reader.ReadToEnd());
    }

    [Fact]
    public async Task No_adapter_no_zip()
    {
        var packager = new ArtifactPackager(_services.Store);
        var run = await _services.Store.CreateAsync(new TrainingSettings(), RunStoreTests.Rows, "faq.xlsx", null);
        Assert.False(packager.HasAdapter(run.Id));
        await Assert.ThrowsAsync<FileNotFoundException>(() => packager.AdapterZipAsync(run.Id));
        Assert.Throws<FileNotFoundException>(() => packager.MergedZip(run.Id));
    }

    [Fact]
    public async Task Download_endpoints_serve_the_zip_the_template_and_404s()
    {
        using var app = new WebAppHost();
        var store = app.Services.GetRequiredService<RunStore>();
        int id = await FinishedRunAsync(store);

        var zip = await app.Client.GetAsync($"/runs/{id}/adapter.zip");
        Assert.Equal(HttpStatusCode.OK, zip.StatusCode);
        Assert.Equal("application/zip", zip.Content.Headers.ContentType?.MediaType);
        using (var archive = new ZipArchive(await zip.Content.ReadAsStreamAsync()))
            Assert.Contains(archive.Entries, e => e.FullName == "adapter_model.safetensors");

        Assert.Equal(HttpStatusCode.NotFound, (await app.Client.GetAsync("/runs/999/adapter.zip")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await app.Client.GetAsync($"/runs/{id}/merged.zip")).StatusCode);
        var template = await app.Client.GetAsync("/data/template.xlsx");
        Assert.Equal(HttpStatusCode.OK, template.StatusCode);
        Assert.Equal("finetune-qa-template.xlsx", template.Content.Headers.ContentDisposition?.FileName?.Trim('"'));
    }
}
