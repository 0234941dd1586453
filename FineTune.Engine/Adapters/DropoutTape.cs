using static TorchSharp.torch;

namespace FineTune.Engine.Adapters;

/// <summary>
/// LoRA dropout masks recorded in a checkpointed forward and replayed, in the same order, when backward runs the
/// layer again: the recomputed activations must equal the forgotten ones. Stored as bool (one byte per element).
/// Which tape is active is per thread: forward records on the caller's thread, backward replays on autograd's.
/// </summary>
public sealed class DropoutTape : IDisposable
{
    [ThreadStatic] private static DropoutTape? _current;
    [ThreadStatic] private static bool _replaying;

    private readonly Queue<Tensor> _masks = new();

    /// <summary>The tape LoRA dropout uses on this thread now, and whether it replays; null outside checkpointing.</summary>
    internal static (DropoutTape Tape, bool Replaying)? Current => _current is null ? null : (_current, _replaying);

    /// <summary>Makes this tape record the masks drawn on this thread until the result is disposed.</summary>
    public IDisposable Record() => new Activation(this, replaying: false);

    /// <summary>Makes this tape hand back its recorded masks, oldest first, until the result is disposed.</summary>
    public IDisposable Replay() => new Activation(this, replaying: true);

    internal void Add(Tensor keep) => _masks.Enqueue(keep.to(ScalarType.Bool).DetachFromDisposeScope());

    internal Tensor Next() => _masks.TryDequeue(out var mask) ? mask
        : throw new InvalidOperationException("The layer drew more dropout masks when run again than when first run; gradient checkpointing needs the same order.");

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
