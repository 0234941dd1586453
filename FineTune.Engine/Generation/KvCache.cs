using static TorchSharp.torch;

namespace FineTune.Engine.Generation;

/// <summary>
/// Keys and values of the positions seen so far, per layer, for incremental decoding (HF's static cache):
/// each layer's buffers (B, nKV, capacity, hD) are allocated once, on first use, and written in place, so a
/// generation allocates nothing per token. Inference only (writes happen without autograd).
/// </summary>
public sealed class KvCache : IDisposable
{
    private readonly Tensor?[] _keys;
    private readonly Tensor?[] _values;

    public KvCache(int layers, int capacity)
    {
        if (layers <= 0) throw new ArgumentOutOfRangeException(nameof(layers), layers, "A model has at least one layer.");
        if (capacity <= 0) throw new ArgumentOutOfRangeException(nameof(capacity), capacity, "The cache must hold at least one position.");
        _keys = new Tensor?[layers];
        _values = new Tensor?[layers];
        Capacity = capacity;
    }

    /// <summary>Positions stored (the "past length" of the next forward pass).</summary>
    public int Length { get; private set; }

    public int Capacity { get; }

    /// <summary>
    /// Stores this pass's k, v (B, nKV, T, hD) of one layer after the past ones and returns views of
    /// all of them (B, nKV, Length + T, hD). The caller owns the returned views (they do not own the memory).
    /// </summary>
    public (Tensor Keys, Tensor Values) Update(int layer, Tensor k, Tensor v)
    {
        long t = k.shape[2];
        if (Length + t > Capacity)
            throw new InvalidOperationException($"The KV cache holds {Capacity} positions; {Length} are used and {t} more do not fit. Create it with a larger capacity (prompt + max new tokens).");
        var keys = _keys[layer] ??= Allocate(k);
        var values = _values[layer] ??= Allocate(v);
        if (keys.shape[0] != k.shape[0] || keys.shape[1] != k.shape[1] || keys.shape[3] != k.shape[3])
            throw new InvalidOperationException($"The KV cache was made for keys [{keys.shape[0]}, {keys.shape[1]}, *, {keys.shape[3]}] but got [{string.Join(", ", k.shape)}]; use a new cache per batch shape.");
        using (no_grad())
        {
            var slots = Slots(t, k.device);                                        // (T) positions Length..Length+T-1
            keys.index_copy_(2, slots, k);
            values.index_copy_(2, slots, v);
        }
        return (keys.narrow(2, 0, Length + t), values.narrow(2, 0, Length + t)); // (B, nKV, Length + T, hD)
    }

    /// <summary>
    /// The positions this pass writes, made once per pass and shared by its layers: one index_copy_ per buffer instead
    /// of a narrowed view and a copy (decode is bound by the host's time per op).
    /// </summary>
    private Tensor Slots(long t, Device device)
    {
        if (_slots is not null && _slotsStart == Length && _slots.shape[0] == t && _slots.device_index == device.index && _slots.device_type == device.type)
            return _slots;
        _slots?.Dispose();
        _slots = arange(Length, Length + t, dtype: ScalarType.Int64, device: device).DetachFromDisposeScope();
        _slotsStart = Length;
        return _slots;
    }

    private Tensor? _slots;
    private int _slotsStart;

    /// <summary>Called once per forward pass, after every layer has stored its T new positions.</summary>
    public void Advance(int newPositions) => Length += newPositions;

    /// <summary>Forgets the stored positions but keeps the buffers for the next generation.</summary>
    public void Reset() => Length = 0;

    /// <summary>Drops positions after <paramref name="length"/> (e.g. to reuse a shared prompt prefix).</summary>
    public void Truncate(int length)
    {
        if (length < 0 || length > Length) throw new ArgumentOutOfRangeException(nameof(length), length, $"The cache holds {Length} positions.");
        Length = length;
    }

    private Tensor Allocate(Tensor like)
    {
        var buffer = zeros([like.shape[0], like.shape[1], Capacity, like.shape[3]], like.dtype, like.device);
        return buffer.DetachFromDisposeScope(); // owned by the cache, not by the forward pass that first used it
    }

    public void Dispose()
    {
        for (int i = 0; i < _keys.Length; i++)
        {
            _keys[i]?.Dispose();
            _values[i]?.Dispose();
            _keys[i] = _values[i] = null;
        }
        _slots?.Dispose();
        _slots = null;
        Length = 0;
    }
}
