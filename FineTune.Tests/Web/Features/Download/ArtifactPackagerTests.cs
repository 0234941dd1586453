using System.IO.Compression;
using System.Net;
using System.Text.Json.Nodes;
using FineTune.Engine.Adapters;
using FineTune.Engine.Training;
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

    /// <summary>A finished run whose adapter/ folder was written as training writes it: PEFT files, then AdapterExport's run files.</summary>
    private async Task<int> FinishedRunAsync(RunStore store)
    {
        var run = await store.CreateAsync(new TrainingSettings { Model = "Qwen/Qwen2.5-0.5B-Instruct" }, RunStoreTests.Rows, "faq.xlsx", null);
        string adapter = Path.Combine(store.RunDirectory(run.Id), ArtifactPackager.AdapterFolder);
        Directory.CreateDirectory(adapter);
        File.WriteAllText(Path.Combine(adapter, "adapter_config.json"), "{\"peft_type\": \"LORA\", \"r\": 16}");
        File.WriteAllBytes(Path.Combine(adapter, "adapter_model.safetensors"), [8, 0, 0, 0, 0, 0, 0, 0, .. "{}      "u8.ToArray()]);
        StepRecord[] history = [new(1, 0.5, 2.25, 2e-4, 0.5), new(2, 1, 1.5, 1e-4, 0.25, EvalLoss: 1.75)];
        var job = new FineTuneJob { ModelFolder = Path.Combine(adapter, "no-base-model-files-here"), FourBit = true, DoubleQuantization = false };
        AdapterExport.WriteRunFiles(adapter, new AdapterRunInfo(job, "Qwen/Qwen2.5-0.5B-Instruct", 5, 0, job.Training, TorchSharp.torch.ScalarType.BFloat16,
            GradientCheckpointing: true, new TrainingResult(2, 2, history, 1.5, 1.75, Completed: true, LastCheckpoint: null), DateTimeOffset.UtcNow));
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
        Assert.Equal(packager.AdapterFiles(id), zip.Entries.Select(e => e.FullName).Order(StringComparer.Ordinal));
        string Read(string name) { using var r = new StreamReader(zip.GetEntry(name)!.Open()); return r.ReadToEnd(); }
        Assert.Equal("{\"peft_type\": \"LORA\", \"r\": 16}", Read("adapter_config.json"));
        // One loss.csv schema (the engine's: HF Trainer's log_history fields), whoever trained.
        Assert.Equal("step,epoch,loss,learning_rate,grad_norm,eval_loss\n1,0.5,2.25,0.0002,0.5,\n2,1,1.5,0.0001,0.25,1.75\n", Read("loss.csv"));
        string card = Read("README.md");
        Assert.StartsWith("---\nbase_model: Qwen/Qwen2.5-0.5B-Instruct\nlibrary_name: peft\n", card);
        Assert.Contains("| LoRA r / alpha / dropout | 16 / 32 / 0.05 |", card);
        // The card tells the settings the run had: NF4 without double quantization here.
        Assert.Contains("| method | QLoRA (base in NF4, compute in bfloat16) |", card);
        Assert.DoesNotContain("double quantization", card);
        var settings = JsonNode.Parse(Read("settings.json"))!;
        Assert.Equal(16, (int)settings["lora"]!["r"]!);
        Assert.False((bool)settings["double_quantization"]!);
        Assert.Equal("tutorial", (string?)settings["template"]);
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
