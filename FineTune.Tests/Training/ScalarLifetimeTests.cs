using FineTune.Engine.Backend;
using FineTune.Engine.Training;
using FineTune.Tests.Support;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FineTune.Tests.Training;

/// <summary>
/// The cause of "INTERNAL ASSERT FAILED at c10/core/Scalar.h … toFloat … THSTensor_add" in long trainings:
/// TorchSharp 0.107 turns a double argument into a Scalar (a native at::Scalar owned by a finalizable object), reads its
/// handle and calls native code without keeping the Scalar alive (no GC.KeepAlive; dotnet/TorchSharp#1434 and #1496 are
/// still open). A garbage collection started by any other thread during that call lets the finalizer thread free the
/// at::Scalar while libtorch reads it. These tests run the optimizer's and the trainer's per-step tensor code while
/// another thread collects without pause: with implicit Scalars they failed within seconds; with the Scalars owned and
/// disposed after the call they do not.
/// </summary>
public class ScalarLifetimeTests
{
    public ScalarLifetimeTests() => _ = ComputeBackend.Current;

    /// <summary>Runs <paramref name="work"/> while another thread allocates and collects, and returns what it threw.</summary>
    private static Exception? UnderCollections(Action work, TimeSpan duration)
    {
        using var stop = new CancellationTokenSource();
        var collector = new Thread(() =>
        {
            while (!stop.IsCancellationRequested)
            {
                _ = new byte[1024];
                GC.Collect(0, GCCollectionMode.Forced, blocking: true);
            }
        }) { IsBackground = true };
        collector.Start();
        try
        {
            var clock = System.Diagnostics.Stopwatch.StartNew();
            while (clock.Elapsed < duration) work();
            return null;
        }
        catch (Exception e)
        {
            return e;
        }
        finally
        {
            stop.Cancel();
            collector.Join();
        }
    }

    [Fact, Trait(Category.Name, Category.Slow)]
    public void Optimizer_steps_survive_collections_on_another_thread()
    {
        using var scope = NewDisposeScope();
        var parameters = new List<Parameter> { new(randn(64, 8)), new(randn(8)) };
        using var optimizer = new FlatAdamW(parameters, 1e-3, weightDecay: 0.01);
        var failure = UnderCollections(() =>
        {
            for (int i = 0; i < 200; i++)
            {
                optimizer.Gradients.normal_();
                using var norm = optimizer.ClipGradNorm(1.0);
                optimizer.Step();
            }
        }, TimeSpan.FromSeconds(20));
        Assert.Null(failure);
        Assert.True(optimizer.Values.isfinite().all().item<bool>());
    }
}
