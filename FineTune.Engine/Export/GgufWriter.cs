using System.Buffers.Binary;
using System.Text;

namespace FineTune.Engine.Export;

/// <summary>GGUF metadata value types (gguf-py constants.GGUFValueType).</summary>
public enum GgufValueType : uint
{
    UInt8 = 0, Int8 = 1, UInt16 = 2, Int16 = 3, UInt32 = 4, Int32 = 5, Float32 = 6, Bool = 7, String = 8, Array = 9,
    UInt64 = 10, Int64 = 11, Float64 = 12,
}

/// <summary>
/// Writes a GGUF v3 file (ggml's format, as gguf-py's GGUFWriter writes it) in one pass without holding tensor data:
/// metadata and tensor infos are given first, the header is written, then each tensor's bytes are streamed in the
/// declared order (chunk by chunk if wanted). Layout: magic "GGUF", version 3, tensor count and key-value count
/// (uint64); key-values (string key, uint32 type, value); tensor infos (name, n_dims, dims innermost first, ggml type,
/// offset within the data section); zero padding to the alignment; the tensor data, each tensor padded to the alignment.
/// Strings are a uint64 byte length and UTF-8 bytes; arrays a uint32 item type, a uint64 count and the items.
/// </summary>
public sealed class GgufWriter : IDisposable
{
    public const uint Magic = 0x46554747; // "GGUF" read as a little-endian uint32
    public const uint Version = 3;
    public const int Alignment = 32;      // GGUF_DEFAULT_ALIGNMENT; general.alignment is not written

    private readonly Stream _stream;
    private readonly List<(string Key, GgufValueType Type, Action<BinaryWriter> Write)> _metadata = [];
    private readonly List<GgufTensorInfo> _tensors = [];
    private readonly HashSet<string> _keys = new(StringComparer.Ordinal);
    private BinaryWriter? _writer;
    private int _next;          // index of the tensor whose bytes come next
    private long _written;      // bytes of that tensor written so far
    private long _dataStart;

    public GgufWriter(Stream stream)
    {
        if (!stream.CanWrite) throw new ArgumentException("The GGUF stream must be writable.", nameof(stream));
        _stream = stream;
    }

    public IReadOnlyList<GgufTensorInfo> Tensors => _tensors;

    public void AddString(string key, string value) => Add(key, GgufValueType.String, w => WriteString(w, value));
    public void AddUInt32(string key, uint value) => Add(key, GgufValueType.UInt32, w => w.Write(value));
    public void AddInt32(string key, int value) => Add(key, GgufValueType.Int32, w => w.Write(value));
    public void AddFloat32(string key, float value) => Add(key, GgufValueType.Float32, w => w.Write(value));
    public void AddBool(string key, bool value) => Add(key, GgufValueType.Bool, w => w.Write(value));

    public void AddStringArray(string key, IReadOnlyList<string> values) =>
        Add(key, GgufValueType.Array, w =>
        {
            w.Write((uint)GgufValueType.String);
            w.Write((ulong)values.Count);
            foreach (var v in values) WriteString(w, v);
        });

    public void AddInt32Array(string key, IReadOnlyList<int> values) =>
        Add(key, GgufValueType.Array, w =>
        {
            w.Write((uint)GgufValueType.Int32);
            w.Write((ulong)values.Count);
            foreach (var v in values) w.Write(v);
        });

    /// <summary>Declares a tensor. <paramref name="shape"/> is in PyTorch order (outermost first); GGUF stores it reversed.</summary>
    public GgufTensorInfo AddTensor(string name, IReadOnlyList<long> shape, GgmlType type)
    {
        if (_writer is not null) throw new InvalidOperationException("Tensors are declared before the header is written.");
        if (_tensors.Any(t => t.Name == name)) throw new ArgumentException($"The tensor '{name}' is declared twice.", nameof(name));
        if (Encoding.UTF8.GetByteCount(name) >= 64) throw new ArgumentException($"GGUF tensor names are shorter than 64 bytes; '{name}' is not.", nameof(name));
        long bytes = GgmlTypes.ByteSize(type, shape);
        long offset = _tensors.Count == 0 ? 0 : Pad(_tensors[^1].Offset + _tensors[^1].Bytes);
        var info = new GgufTensorInfo(name, [.. shape], type, offset, bytes);
        _tensors.Add(info);
        return info;
    }

    /// <summary>Writes header, metadata and tensor infos, and pads to where the tensor data starts.</summary>
    public void WriteHeader()
    {
        if (_writer is not null) throw new InvalidOperationException("The header is written once.");
        _writer = new BinaryWriter(_stream, Encoding.UTF8, leaveOpen: true); // little-endian on every platform
        _writer.Write(Magic);
        _writer.Write(Version);
        _writer.Write((ulong)_tensors.Count);
        _writer.Write((ulong)_metadata.Count);
        foreach (var (key, type, write) in _metadata)
        {
            WriteString(_writer, key);
            _writer.Write((uint)type);
            write(_writer);
        }
        foreach (var t in _tensors)
        {
            WriteString(_writer, t.Name);
            _writer.Write((uint)t.Shape.Length);
            for (int d = t.Shape.Length - 1; d >= 0; d--) _writer.Write((ulong)t.Shape[d]);
            _writer.Write((uint)t.Type);
            _writer.Write((ulong)t.Offset);
        }
        _writer.Flush();
        WritePadding(_stream.Position);
        _dataStart = _stream.Position;
    }

    /// <summary>The next bytes of the current tensor (tensors come in declaration order).</summary>
    public void WriteTensorData(ReadOnlySpan<byte> bytes)
    {
        if (_writer is null) throw new InvalidOperationException("Write the header before tensor data.");
        if (_next >= _tensors.Count) throw new InvalidOperationException("Every declared tensor is written already.");
        var t = _tensors[_next];
        if (_written + bytes.Length > t.Bytes)
            throw new InvalidOperationException($"'{t.Name}' is {t.Bytes} bytes as {t.Type}; {_written + bytes.Length} were given.");
        _stream.Write(bytes);
        _written += bytes.Length;
    }

    /// <summary>Ends the current tensor: checks its size and pads to the alignment.</summary>
    public void EndTensor()
    {
        var t = _tensors[_next];
        if (_written != t.Bytes) throw new InvalidOperationException($"'{t.Name}' needs {t.Bytes} bytes; {_written} were written.");
        long expected = _dataStart + t.Offset + t.Bytes;
        if (_stream.CanSeek && _stream.Position != expected)
            throw new InvalidOperationException($"'{t.Name}' ends at byte {_stream.Position}, not at {expected} as declared.");
        WritePadding(t.Bytes);
        _next++;
        _written = 0;
    }

    /// <summary>Checks that every declared tensor was written and flushes.</summary>
    public void Finish()
    {
        if (_writer is null || _next != _tensors.Count)
            throw new InvalidOperationException($"{_tensors.Count - _next} declared tensors were not written.");
        _stream.Flush();
    }

    public void Dispose() => _writer?.Dispose();

    public static long Pad(long n) => (n + Alignment - 1) / Alignment * Alignment;

    private void Add(string key, GgufValueType type, Action<BinaryWriter> write)
    {
        if (_writer is not null) throw new InvalidOperationException("Metadata is added before the header is written.");
        if (!_keys.Add(key)) throw new ArgumentException($"The metadata key '{key}' is set twice.", nameof(key));
        _metadata.Add((key, type, write));
    }

    private void WritePadding(long length)
    {
        long pad = Pad(length) - length;
        for (long i = 0; i < pad; i++) _stream.WriteByte(0);
    }

    private static void WriteString(BinaryWriter w, string value)
    {
        byte[] bytes = Encoding.UTF8.GetBytes(value);
        w.Write((ulong)bytes.Length);
        w.Write(bytes);
    }
}

/// <summary>One declared tensor: PyTorch-order shape, ggml type, offset in the data section, byte size.</summary>
public sealed record GgufTensorInfo(string Name, long[] Shape, GgmlType Type, long Offset, long Bytes);
