using static TorchSharp.torch;

namespace FineTune.Engine.Adapters;

/// <summary>
/// Where LoRA dropout draws its masks on a GPU during one micro-batch: a seed in device memory, written by the trainer
/// before each micro-batch from (run seed, step, micro-batch, replica), and the key of the next draw, counted from 0 in
/// every micro-batch. A mask is a function of (seed, key) alone (<see cref="Kernels.FusedOps.Dropout"/>): a checkpointed
/// layer's recompute replays its keys (<see cref="DropoutTape"/>), and a CUDA graph captured from one micro-batch draws the
/// next micro-batch's masks when replayed after the seed in memory changed, since its keys are the same in every micro-batch.
/// Active per thread, as the tape: the trainer's thread draws, autograd's threads replay recorded keys.
/// </summary>
public sealed class DropoutDraws : IDisposable
{
    [ThreadStatic] private static DropoutDraws? _current;

    private readonly DropoutDraws? _previous;
    private long _nextKey;

    private DropoutDraws(Tensor seed)
    {
        Seed = seed;
        _previous = _current;
        _current = this;
    }

    /// <summary>(1) int64 on the GPU: the micro-batch's seed.</summary>
    public Tensor Seed { get; }

    /// <summary>The draws of this thread now; null outside a training micro-batch on a GPU.</summary>
    internal static DropoutDraws? Current => _current;

    /// <summary>
    /// Makes <paramref name="seed"/> ((1) int64 on the GPU, kept by the caller) this thread's draws until disposed, after
    /// writing <paramref name="value"/> into it (one kernel, queued: no wait for the device).
    /// </summary>
    public static DropoutDraws Begin(Tensor seed, long value)
    {
        seed.fill_(value);
        return new DropoutDraws(seed);
    }

    /// <summary>The micro-batch's seed for a step: a 64-bit mix of the run's seed, the step, the micro-batch and the replica.</summary>
    public static long SeedFor(int runSeed, int step, int microBatch, int replica)
    {
        ulong z = (ulong)(uint)runSeed;
        foreach (ulong part in new[] { (ulong)(uint)step, (ulong)(uint)microBatch, (ulong)(uint)replica })
            z = Mix(z ^ Mix(part + 0x632BE59BD9B4E019ul));
        return (long)z;
    }

    /// <summary>splitmix64's output function (the kernel's mix).</summary>
    internal static ulong Mix(ulong z)
    {
        z += 0x9E3779B97F4A7C15ul;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ul;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBul;
        return z ^ (z >> 31);
    }

    /// <summary>The key of the next draw in this micro-batch.</summary>
    internal long NextKey() => _nextKey++;

    /// <summary>Masks the kernel drew with these draws' seed on this thread (checks use it to tell that the kernel ran).</summary>
    internal int KernelDraws { get; set; }

    public void Dispose()
    {
        if (ReferenceEquals(_current, this)) _current = _previous;
    }
}
