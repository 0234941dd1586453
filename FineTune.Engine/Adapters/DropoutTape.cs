using FineTune.Engine.Distributed;
using static TorchSharp.torch;

namespace FineTune.Engine.Adapters;

/// <summary>
/// How a checkpointed layer's LoRA dropout masks were drawn, so that backward, running the layer again, draws the same
/// ones in the same order: the recomputed activations must equal the forgotten ones. With FineTune's kernels on a GPU the
/// tape records each draw's (device seed, key) of <see cref="DropoutDraws"/> and hands them back. Else on CUDA the tape hands out one seed
/// per draw and the draw seeds the device's generator with it first (torch's fused dropout then gives the same mask for the
/// same seed; nothing is kept); masks drawn from an explicit CPU generator are recorded as bool (one byte per element).
/// Which tape is active is per thread: forward records on the caller's thread, backward replays on autograd's.
/// </summary>
public sealed class DropoutTape : IDisposable
{
    [ThreadStatic] private static DropoutTape? _current;
    [ThreadStatic] private static bool _replaying;

    private readonly Queue<Tensor> _masks = new();
    private readonly bool _keepMasks;
    private readonly List<long> _seeds = [];
    private readonly List<(Tensor Seed, long Key)> _draws = [];
    private long _firstSeed;
    private int _replayed;

    /// <param name="keepMasks">False: hand out seeds only, for a layer that is not run again (CPU masks are not kept).</param>
    public DropoutTape(bool keepMasks = true) => _keepMasks = keepMasks;

    /// <summary>Whether masks drawn on the CPU are kept for a replay.</summary>
    internal bool KeepsMasks => _keepMasks;

    /// <summary>The tape LoRA dropout uses on this thread now, and whether it replays; null outside checkpointing.</summary>
    internal static (DropoutTape Tape, bool Replaying)? Current => _current is null ? null : (_current, _replaying);

    /// <summary>Makes this tape record the masks drawn on this thread until the result is disposed.</summary>
    public IDisposable Record() => new Activation(this, replaying: false);

    /// <summary>Makes this tape hand back its recorded masks and seeds, oldest first, until the result is disposed.</summary>
    public IDisposable Replay()
    {
        _replayed = 0;
        return new Activation(this, replaying: true);
    }

    internal void Add(Tensor keep)
    {
        if (_keepMasks) _masks.Enqueue(keep.to(ScalarType.Bool).DetachFromDisposeScope());
    }

    internal Tensor Next() => _masks.TryDequeue(out var mask) ? mask
        : throw new InvalidOperationException("The layer drew more dropout masks when run again than when first run; gradient checkpointing needs the same order.");

    /// <summary>
    /// The seed of the next device draw while recording. The first is drawn from torch's CPU generator (which the trainer
    /// seeds every step, so masks depend on the run's seed and step alone); the others follow it (Philox streams of
    /// different seeds are independent).
    /// </summary>
    internal long NewSeed()
    {
        if (_seeds.Count == 0)
        {
            using var drawn = randint(0, 1L << 62, [1], ScalarType.Int64);
            _firstSeed = drawn.item<long>();
        }
        long seed = _firstSeed + _seeds.Count;
        _seeds.Add(seed);
        return seed;
    }

    /// <summary>Records a draw of the device-seeded dropout (<see cref="DropoutDraws"/>), for <see cref="ReplayedDraw"/>.</summary>
    internal void AddDraw((Tensor Seed, long Key) draw) => _draws.Add(draw);

    /// <summary>Whether the first pass drew device-seeded masks (<see cref="ReplayedDraw"/> hands them back), not torch's dropout.</summary>
    internal bool HasDraws => _draws.Count > 0;

    /// <summary>The recorded device-seeded draws in order while replaying; null when this tape recorded none (torch's dropout drew).</summary>
    internal (Tensor Seed, long Key)? ReplayedDraw()
    {
        if (_draws.Count == 0) return null;
        return _replayed < _draws.Count ? _draws[_replayed++]
            : throw new InvalidOperationException("The layer drew more dropout masks when run again than when first run; gradient checkpointing needs the same order.");
    }

    /// <summary>The seed of the next device draw while replaying: the recorded ones in order.</summary>
    internal long ReplayedSeed() => _replayed < _seeds.Count ? _seeds[_replayed++]
        : throw new InvalidOperationException("The layer drew more dropout masks when run again than when first run; gradient checkpointing needs the same order.");

    /// <summary>
    /// Seeds the default generator of <paramref name="device"/> (torch.cuda.manual_seed seeds the calling thread's current
    /// device, so that is made the tensor's device first; autograd's device threads and data-parallel replicas have it already).
    /// </summary>
    internal static void SeedDevice(Device device, long seed)
    {
        int index = device.index < 0 ? 0 : device.index;
        if (CudaRuntime.CurrentDevice() != index) CudaRuntime.SetDevice(index);
        cuda.manual_seed(seed);
    }

    public void Dispose()
    {
        while (_masks.TryDequeue(out var mask)) mask.Dispose();
    }

    private sealed class Activation : IDisposable
    {
        private readonly DropoutTape? _previous = _current;
        private readonly bool _previousReplaying = _replaying;

        public Activation(DropoutTape tape, bool replaying) => (_current, _replaying) = (tape, replaying);

        public void Dispose() => (_current, _replaying) = (_previous, _previousReplaying);
    }
}
