namespace FineTune.Engine.Kernels;

/// <summary>
/// One value per GPU ordinal, made by <c>load</c> at the GPU's first use and kept, as is a failure (with its reason):
/// a GPU is tried once, never again on every operation. Reads after the first are a lock-free array look-up, as
/// every fused op asks on every call; the first use of an ordinal takes a lock, so two threads starting on the same
/// GPU load it once. Ordinals outside 0..count-1 have no value and are never loaded.
/// </summary>
internal sealed class PerDevice<T>(int count, Func<int, (T? Value, string? Failure)> load) where T : class
{
    private readonly T?[] _values = new T?[Math.Max(0, count)];
    private readonly string?[] _failures = new string?[Math.Max(0, count)];
    private readonly bool[] _tried = new bool[Math.Max(0, count)];
    private readonly Lock _gate = new();

    public int Count => _values.Length;

    /// <summary>The value of GPU <paramref name="ordinal"/>, loading it at the first call; null where it failed or the ordinal does not exist.</summary>
    public T? Get(int ordinal)
    {
        if ((uint)ordinal >= (uint)_values.Length) return null;
        if (Volatile.Read(ref _values[ordinal]) is { } value) return value;
        lock (_gate)
        {
            if (_tried[ordinal]) return _values[ordinal];
            var (loaded, failure) = load(ordinal);
            _failures[ordinal] = loaded is null ? failure ?? $"GPU {ordinal}: not loaded" : null;
            Volatile.Write(ref _values[ordinal], loaded);
            _tried[ordinal] = true;
            return loaded;
        }
    }

    /// <summary>Why GPU <paramref name="ordinal"/> has no value (after its first use), or null.</summary>
    public string? Failure(int ordinal)
    {
        if ((uint)ordinal >= (uint)_values.Length) return $"GPU {ordinal}: no such GPU ({_values.Length} seen)";
        lock (_gate) return _failures[ordinal];
    }
}
