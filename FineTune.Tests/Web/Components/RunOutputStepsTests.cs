using Bunit;
using FineTune.Tests.Web.Features.Runs;
using FineTune.Web.Components.Pages.Wizard.Download;
using FineTune.Web.Components.Pages.Wizard.Test;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using Microsoft.Extensions.DependencyInjection;

namespace FineTune.Tests.Web.Components;

/// <summary>Step 5's API snippet and step 6's GGUF panel (the parts the test and download steps show) for a finished run.</summary>
public sealed class RunOutputStepsTests : ComponentTestContext
{
    private async Task<int> FinishedRunAsync()
    {
        var run = await Runs.Store.CreateAsync(new TrainingSettings { Model = "Qwen/Qwen2.5-0.5B-Instruct" }, RunStoreTests.Rows, "faq.xlsx", null);
        string adapter = Services.GetRequiredService<ArtifactPackager>().AdapterDirectory(run.Id);
        Directory.CreateDirectory(adapter);
        File.WriteAllText(Path.Combine(adapter, "adapter_config.json"), "{\"peft_type\": \"LORA\", \"r\": 16}");
        await Runs.Store.SetStatusAsync(run.Id, RunStatus.Completed);
        return run.Id;
    }

    [Fact]
    public async Task The_test_step_shows_curl_and_python_for_the_runs_model()
    {
        int id = await FinishedRunAsync();
        var cut = Render<ApiSnippet>(p => p.Add(s => s.RunId, id));
        cut.WaitForAssertion(() => Assert.NotEmpty(cut.FindAll("[data-testid=api-snippet]")));
        cut.Find("[data-testid=api-snippet] .mud-expand-panel-header").Click();
        cut.WaitForAssertion(() => Assert.Contains($"\"model\": \"finetune-run-{id}\"", cut.Find("[data-testid=api-curl]").TextContent));
        Assert.Contains("/v1/chat/completions", cut.Find("[data-testid=api-curl]").TextContent);
        Assert.Contains($"model=\"finetune-run-{id}\"", cut.Find("[data-testid=api-python]").TextContent);
    }

    [Fact]
    public async Task The_download_step_offers_gguf_and_shows_the_ollama_line_once_exported()
    {
        int id = await FinishedRunAsync();
        var gguf = Services.GetRequiredService<GgufDownloads>();
        var cut = Render<GgufExportPanel>(p => p.Add(s => s.RunId, id));
        cut.WaitForAssertion(() => Assert.NotEmpty(cut.FindAll("[data-testid=export-gguf]")));
        Assert.Empty(cut.FindAll("[data-testid=ollama-hint]"));

        Directory.CreateDirectory(gguf.Directory(id));
        File.WriteAllText(gguf.GgufPath(id, "q8_0"), "GGUF");
        File.WriteAllText(Path.Combine(gguf.Directory(id), GgufDownloads.ModelfileName(id, "q8_0")), "FROM ./x.gguf\n");
        cut = Render<GgufExportPanel>(p => p.Add(s => s.RunId, id));
        cut.WaitForAssertion(() => Assert.Equal($"ollama create finetune-run{id}-q8_0 -f finetune-run{id}-q8_0.Modelfile", cut.Find("[data-testid=ollama-hint]").TextContent));
        Assert.Equal($"/runs/{id}/gguf/finetune-run{id}-q8_0.gguf", cut.Find("[data-testid=download-gguf]").GetAttribute("href"));
    }
}
