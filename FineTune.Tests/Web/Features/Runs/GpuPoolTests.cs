using FineTune.Engine.Backend;
using FineTune.Engine.Training;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;

namespace FineTune.Tests.Web.Features.Runs;

/// <summary>
/// What a queued run asks of a GPU: the least memory it can need (auto gradient checkpointing counted on), so a GPU that
/// holds the run only with checkpointing is still one it may get; the settings page decides against the smallest such GPU.
/// </summary>
public sealed class GpuPoolTests
{
    /// <summary>The 7B preset in 16 bits, auto checkpointing: about 15 GB of weights, more with every layer's activations kept.</summary>
    private static TrainingSettings SixteenBit7B() =>
        new() { Source = ModelSource.Preset, Model = "Qwen/Qwen2.5-7B-Instruct", Quantization = Quantization.None, Gpus = GpuChoice.One };

    [Fact]
    public void A_run_with_auto_checkpointing_asks_for_its_memory_with_checkpointing_on()
    {
        var settings = SixteenBit7B();
        var shape = ModelCatalog.FactsOf(settings)!;
        var with = TrainingEstimator.Memory(shape, settings, gpuBytes: 1); // nothing fits one byte: checkpointing on
        var without = TrainingEstimator.Memory(shape, settings, gpuBytes: 1L << 50);
        Assert.True(with.GradientCheckpointing);
        Assert.False(without.GradientCheckpointing);
        Assert.True(with.Total < without.Total);

        var request = new GpuPool([]).RequestFor(settings, rows: 100, totalTokens: 10_000);
        Assert.Equal(with.Total, request.BytesPerGpu);

        // Set explicitly, the request is that setting's memory.
        settings.GradientCheckpointing = false;
        Assert.Equal(without.Total, new GpuPool([]).RequestFor(settings, 100, 10_000).BytesPerGpu);
    }

    [Fact]
    public void A_gpu_that_holds_the_run_only_with_checkpointing_is_a_candidate_and_the_page_decides_against_it()
    {
        var settings = SixteenBit7B();
        var shape = ModelCatalog.FactsOf(settings)!;
        long with = TrainingEstimator.Memory(shape, settings, gpuBytes: 1).Total;
        long without = TrainingEstimator.Memory(shape, settings, gpuBytes: 1L << 50).Total;
        long middle = (with + without) / 2; // holds the run with checkpointing, not without (less than without / 90% too)
        var pool = new GpuPool([new GpuDevice(0, "Fake small GPU", with / 2), new GpuDevice(1, "Fake middle GPU", middle), new GpuDevice(2, "Fake big GPU", 4 * without)]);

        var request = pool.RequestFor(settings, 100, 10_000);
        Assert.Equal([1, 2], pool.Candidates(request).Select(g => g.Index));
        Assert.Equal(middle, pool.SmallestGpuFor(settings, 100, 10_000));
        Assert.True(TrainingEstimator.Memory(shape, settings, middle).GradientCheckpointing);
        Assert.False(TrainingEstimator.Memory(shape, settings, 4 * without).GradientCheckpointing);

        // A one-GPU run takes the smallest free candidate: the middle GPU, where it will recompute its layers.
        using var lease = pool.TryTake(request)!;
        Assert.Equal([1], lease.Indices);
        Assert.Null(new GpuPool([]).SmallestGpuFor(settings, 100, 10_000)); // the CPU backend: no GPU to decide by
    }

    [Fact]
    public void The_gpus_a_run_would_take_are_every_candidate_for_an_every_gpu_run_else_the_smallest_that_holds_it()
    {
        var settings = SixteenBit7B();
        long without = TrainingEstimator.Memory(ModelCatalog.FactsOf(settings)!, settings, gpuBytes: 1L << 50).Total;
        long with = TrainingEstimator.Memory(ModelCatalog.FactsOf(settings)!, settings, gpuBytes: 1).Total;
        var pool = new GpuPool([new GpuDevice(0, "Fake big GPU", 4 * without), new GpuDevice(1, "Fake small GPU", with / 2), new GpuDevice(2, "Fake middle GPU", 2 * without)]);

        settings.Gpus = GpuChoice.One;
        Assert.Equal([2], pool.PlannedGpus(settings, 100, 10_000));        // the least memory that holds it, as TryTake takes it
        using (var lease = pool.TryTake(pool.RequestFor(settings, 100, 10_000))!) Assert.Equal([2], lease.Indices);
        settings.Gpus = GpuChoice.All;
        Assert.Equal([0, 2], pool.PlannedGpus(settings, 100, 10_000));     // every GPU that can hold it
        settings.Gpus = GpuChoice.Auto;                                     // 10,000 tokens: minutes on one GPU, so one
        Assert.Equal([2], pool.PlannedGpus(settings, 100, 10_000));
        Assert.Equal([0, 2], pool.PlannedGpus(settings, 100, 100_000_000)); // a long run: every GPU
        Assert.Empty(new GpuPool([]).PlannedGpus(settings, 100, 10_000)); // the CPU backend
    }
}
