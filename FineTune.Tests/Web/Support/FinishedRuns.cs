using FineTune.Engine.Adapters;
using FineTune.Engine.Models;
using FineTune.Engine.Training;
using FineTune.Web.Features.Download;
using FineTune.Web.Features.Runs;
using Microsoft.Extensions.DependencyInjection;
using static TorchSharp.torch;

namespace FineTune.Tests.Web.Support;

/// <summary>A completed run on the qwen2 fixture without training: a seeded random LoRA adapter (B not zero, so it changes answers) saved as the run's.</summary>
public static class FinishedRuns
{
    public static async Task<int> CreateAsync(WebAppHost app, Func<RunStore, Task<Run>> create)
    {
        var store = app.Services.GetRequiredService<RunStore>();
        var run = await create(store);
        string fixture = TestFiles.Fixture("models/qwen2");
        string adapter = app.Services.GetRequiredService<ArtifactPackager>().AdapterDirectory(run.Id);
        using (var model = ModelLoader.Load(fixture, new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 }))
        {
            var linears = new CausalLmTraining(model).NamedLinears().ToArray();
            var lora = new LoraSettings(4, 8, 0);
            LoraInjector.Attach(linears, lora, seed: 5);
            using (no_grad())
                foreach (var (_, layer) in linears.Where(l => l.Layer.HasAdapter))
                    layer.lora_B!.weight!.copy_(randn(layer.lora_B.weight.shape, generator: new TorchSharp.torch.Generator(9)) * 0.05);
            PeftAdapter.Save(adapter, linears, lora, fixture);
        }
        await store.SetStatusAsync(run.Id, RunStatus.Completed);
        return run.Id;
    }
}
