using FineTune.Engine.Kernels;
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
        long[] shape = k.shape;
        var (keys, values) = Buffers(layer, shape[0], shape[1], shape[2], shape[3], k);
        long t = shape[2];
        using (no_grad())
        {
            var slots = Slots(t, k.device);                                        // (T) positions Length..Length+T-1
            keys.index_copy_(2, slots, k);
            values.index_copy_(2, slots, v);
        }
        return (keys.narrow(2, 0, Length + t), values.narrow(2, 0, Length + t)); // (B, nKV, Length + T, hD)
    }

    /// <summary>
    /// RoPE on this pass's q (B, nH, T, hD) and k (B, nKV, T, hD) with the tables of AttentionOps.RotaryTables, then k
    /// and v stored as <see cref="Update"/> stores them: returns the rotated q and views of all keys and values
    /// (B, nKV, Length + T, hD). A one-token pass on CUDA does it in one kernel (FusedOps.RotaryStore, bit-equal);
    /// otherwise RoPE twice and <see cref="Update"/>.
    /// </summary>
    public (Tensor Query, Tensor Keys, Tensor Values) RotateAndUpdate(int layer, Tensor q, Tensor k, Tensor v, Tensor cos, Tensor signedSin)
    {
        long[] shape = k.shape;
        var (keys, values) = Buffers(layer, shape[0], shape[1], shape[2], shape[3], k);
        if (FusedOps.RotaryStore(q, k, v, cos, signedSin, keys, values, Length) is { } rotated)
            return (rotated, keys.narrow(2, 0, Length + 1), values.narrow(2, 0, Length + 1));
        var (allKeys, allValues) = Update(layer, FusedOps.Rotary(k, cos, signedSin), v);
        return (FusedOps.Rotary(q, cos, signedSin), allKeys, allValues);
    }

    /// <summary>
    /// <see cref="RotateAndUpdate(int, Tensor, Tensor, Tensor, Tensor, Tensor)"/> for one new position whose q, k and v
    /// are side by side in one projection's output (B, 1, (nH + 2·nKV)·hD) (a StackedLinear's): one kernel reads them
    /// in place on CUDA; elsewhere they are taken apart as views.
    /// </summary>
    public (Tensor Query, Tensor Keys, Tensor Values) RotateAndUpdate(int layer, Tensor qkv, int heads, int kvHeads, Tensor cos, Tensor signedSin)
    {
        long[] shape = qkv.shape;
        long b = shape[0], d = shape[2] / (heads + 2 * kvHeads);
        if (shape[1] != 1 || d * (heads + 2 * kvHeads) != shape[2])
            throw new ArgumentException($"Stacked q, k, v of one position must be (B, 1, (nH + 2·nKV)·hD); they are [{string.Join(", ", shape)}] for {heads} and {kvHeads} heads.", nameof(qkv));
        var (keys, values) = Buffers(layer, b, kvHeads, 1, d, qkv);
        if (FusedOps.RotaryStore(qkv, heads, kvHeads, cos, signedSin, keys, values, Length) is { } rotated)
            return (rotated, keys.narrow(2, 0, Length + 1), values.narrow(2, 0, Length + 1));
        var q = qkv.narrow(2, 0, heads * d).view(b, heads, 1, d);                    // (B, nH, 1, hD)
        var k = qkv.narrow(2, heads * d, kvHeads * d).view(b, kvHeads, 1, d);       // (B, nKV, 1, hD)
        var v = qkv.narrow(2, (heads + kvHeads) * d, kvHeads * d).view(b, kvHeads, 1, d);
        return RotateAndUpdate(layer, q, k, v, cos, signedSin);
    }

    /// <summary>The layer's buffers (allocated on first use, in <paramref name="like"/>'s dtype and device), checked against this pass's keys (B, nKV, T, hD).</summary>
    private (Tensor Keys, Tensor Values) Buffers(int layer, long b, long kvHeads, long t, long d, Tensor like)
    {
        if (Length + t > Capacity)
            throw new InvalidOperationException($"The KV cache holds {Capacity} positions; {Length} are used and {t} more do not fit. Create it with a larger capacity (prompt + max new tokens).");
        var keys = _keys[layer] ??= Allocate(b, kvHeads, d, like);
        var values = _values[layer] ??= Allocate(b, kvHeads, d, like);
        long[] buffer = keys.shape;
        if (buffer[0] != b || buffer[1] != kvHeads || buffer[3] != d)
            throw new InvalidOperationException($"The KV cache was made for keys [{buffer[0]}, {buffer[1]}, *, {buffer[3]}] but got [{b}, {kvHeads}, {t}, {d}]; use a new cache per batch shape.");
        return (keys, values);
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

    private Tensor Allocate(long b, long kvHeads, long d, Tensor like)
    {
        var buffer = zeros([b, kvHeads, Capacity, d], like.dtype, like.device);
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
