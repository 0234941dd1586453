using FineTune.Engine.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Tests.Kernels;

/// <summary>Which GPU's kernels a tensor's device selects, and that each GPU is loaded once, failures included.</summary>
public class PerDeviceTests
{
    [Fact]
    public void Each_gpu_loads_at_its_first_use_and_once()
    {
        var loads = new List<int>();
        var modules = new PerDevice<string>(3, ordinal => { loads.Add(ordinal); return ($"module {ordinal}", null); });

        Assert.Equal("module 2", modules.Get(2));
        Assert.Equal("module 2", modules.Get(2));
        Assert.Equal("module 0", modules.Get(0));
        Assert.Equal([2, 0], loads);
        Assert.Null(modules.Failure(2));
        Assert.Null(modules.Failure(1)); // not tried yet
    }

    [Fact]
    public void A_gpu_that_failed_is_not_tried_again_and_keeps_its_reason()
    {
        int attempts = 0;
        var modules = new PerDevice<string>(2, ordinal =>
        {
            attempts++;
            return ordinal == 1 ? (null, "GPU 1: cuModuleLoadData failed") : ("module 0", null);
        });

        Assert.Null(modules.Get(1));
        Assert.Null(modules.Get(1));
        Assert.Equal(1, attempts);
        Assert.Equal("GPU 1: cuModuleLoadData failed", modules.Failure(1));
        Assert.Equal("module 0", modules.Get(0)); // the other GPU is unaffected
    }

    [Fact]
    public void Ordinals_the_driver_does_not_have_load_nothing()
    {
        int attempts = 0;
        var modules = new PerDevice<string>(2, _ => { attempts++; return ("module", null); });

        Assert.Null(modules.Get(2));
        Assert.Null(modules.Get(-1));
        Assert.Equal(0, attempts);
        Assert.Contains("no such GPU", modules.Failure(5));
    }

    [Fact]
    public void Threads_starting_on_one_gpu_together_load_it_once()
    {
        int attempts = 0;
        using var release = new ManualResetEventSlim();
        var modules = new PerDevice<object>(2, _ =>
        {
            Interlocked.Increment(ref attempts);
            release.Wait(TimeSpan.FromSeconds(5));
            return (new object(), null);
        });

        var results = new object?[4];
        var threads = Enumerable.Range(0, 4).Select(i => new Thread(() => results[i] = modules.Get(1))).ToArray();
        foreach (var thread in threads) thread.Start();
        Thread.Sleep(50);
        release.Set();
        foreach (var thread in threads) thread.Join();

        Assert.Equal(1, attempts);
        Assert.NotNull(results[0]);
        Assert.All(results, r => Assert.Same(results[0], r));
    }

    [Fact]
    public void A_tensor_device_selects_its_gpu_ordinal()
    {
        Assert.Equal(0, CudaKernels.Ordinal(new Device(DeviceType.CUDA, 0)));
        Assert.Equal(1, CudaKernels.Ordinal(new Device(DeviceType.CUDA, 1)));
        Assert.Equal(0, CudaKernels.Ordinal(new Device(DeviceType.CUDA))); // "cuda" without an index: libtorch's GPU 0
        Assert.Null(CudaKernels.Ordinal(CPU));
    }
}
