using System.Buffers.Binary;
using System.Text.Json;
using Microsoft.Win32.SafeHandles;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Models;

/// <summary>One tensor's place in a safetensors file.</summary>
/// <param name="Name">The key, e.g. "model.layers.0.self_attn.q_proj.weight".</param>
/// <param name="DType">The file's dtype string ("F32", "BF16", ...).</param>
/// <param name="Shape">The tensor's shape.</param>
/// <param name="Offset">Absolute byte offset of the data in the file.</param>
/// <param name="Length">Byte length of the data.</param>
public sealed record SafeTensorEntry(string Name, string DType, long[] Shape, long Offset, long Length)
{
    public ScalarType ScalarType => SafeTensors.ToScalarType(DType, Name);
}

/// <summary>
/// The safetensors format (huggingface/safetensors): 8 bytes little-endian header length, a JSON header
/// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {str: str}}, then the raw little-endian data.
/// </summary>
public static class SafeTensors
{
    private static readonly (string Name, ScalarType Type)[] DTypes =
    [
        ("F32", ScalarType.Float32), ("F16", ScalarType.Float16), ("BF16", ScalarType.BFloat16), ("F64", ScalarType.Float64),
        ("I64", ScalarType.Int64), ("I32", ScalarType.Int32), ("I16", ScalarType.Int16), ("I8", ScalarType.Int8),
        ("U8", ScalarType.Byte), ("BOOL", ScalarType.Bool),
    ];

    public static ScalarType ToScalarType(string dtype, string tensorName)
    {
        foreach (var (name, type) in DTypes)
            if (name == dtype) return type;
        throw new ModelFormatException(
            $"Tensor '{tensorName}' has dtype {dtype}, which is not supported (supported: {string.Join(", ", DTypes.Select(d => d.Name))}).");
    }

    public static string ToDTypeName(ScalarType type)
    {
        foreach (var (name, t) in DTypes)
            if (t == type) return name;
        throw new NotSupportedException($"Tensors of type {type} cannot be written to safetensors here (supported: {string.Join(", ", DTypes.Select(d => d.Name))}).");
    }

    /// <summary>
    /// Writes tensors to a .safetensors file (any device; copied to the CPU one at a time), keys sorted,
    /// with optional string metadata such as {"format": "pt"} (what PEFT and transformers write).
    /// The folder is created if missing; the file appears whole or not at all (written to path.tmp, then moved).
    /// </summary>
    public static void Save(string path, IEnumerable<KeyValuePair<string, Tensor>> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var items = tensors.OrderBy(t => t.Key, StringComparer.Ordinal).ToList();
        var header = new Dictionary<string, object>();
        if (metadata is { Count: > 0 }) header["__metadata__"] = metadata;
        long offset = 0;
        foreach (var (name, tensor) in items)
        {
            long length = tensor.NumberOfElements * tensor.ElementSize;
            header[name] = new { dtype = ToDTypeName(tensor.dtype), shape = tensor.shape, data_offsets = new[] { offset, offset + length } };
            offset += length;
        }
        byte[] json = JsonSerializer.SerializeToUtf8Bytes(header);
        int padded = (json.Length + 7) / 8 * 8; // the data starts 8-byte aligned; the format pads the header with spaces
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        string tempPath = path + ".tmp";
        using (var stream = new FileStream(tempPath, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        {
            Span<byte> lengthBytes = stackalloc byte[8];
            BinaryPrimitives.WriteUInt64LittleEndian(lengthBytes, (ulong)padded);
            stream.Write(lengthBytes);
            stream.Write(json);
            for (int i = json.Length; i < padded; i++) stream.WriteByte((byte)' ');
            foreach (var (_, tensor) in items)
            {
                using var scope = NewDisposeScope();
                var cpu = tensor.detach().cpu().contiguous();
                WriteBytes(stream, cpu);
            }
        }
        File.Move(tempPath, path, overwrite: true);
    }

    /// <summary>Reads every tensor of a file onto the CPU (for small files such as adapters and golden outputs). Caller owns them.</summary>
    public static Dictionary<string, Tensor> LoadAll(string path)
    {
        using var file = SafeTensorsReader.Open(path);
        return file.Entries.ToDictionary(e => e.Name, e => file.Read(e.Name));
    }

    private static void WriteBytes(Stream stream, Tensor cpu)
    {
        // Chunks keep each span under 2 GB; `bytes` is a view of the tensor's own memory (no copy).
        using var flat = cpu.view(-1);
        long count = flat.shape[0];
        long chunk = Math.Max(1, (1L << 30) / Math.Max(1, cpu.ElementSize));
        for (long start = 0; start < count; start += chunk)
        {
            using var part = flat.narrow(0, start, Math.Min(chunk, count - start));
            stream.Write(part.bytes);
        }
    }

    internal static void ReadInto(SafeFileHandle handle, long offset, Tensor destination)
    {
        using var flat = destination.view(-1);
        long count = flat.shape[0];
        long chunk = Math.Max(1, (1L << 30) / Math.Max(1, destination.ElementSize));
        for (long start = 0; start < count; start += chunk)
        {
            using var part = flat.narrow(0, start, Math.Min(chunk, count - start));
            Span<byte> span = part.bytes;
            long position = offset + start * destination.ElementSize;
            while (span.Length > 0)
            {
                int read = RandomAccess.Read(handle, span, position);
                if (read == 0) throw new ModelFormatException("A safetensors file ends before its tensor data does; it is truncated (download it again).");
                span = span[read..];
                position += read;
            }
        }
    }
}

/// <summary>
/// One open .safetensors file: the header is parsed on open; each tensor is read on request straight
/// into a new CPU tensor (no intermediate managed copy), so a model is never held twice in memory.
/// </summary>
public sealed class SafeTensorsReader : IDisposable
{
    private readonly SafeFileHandle _handle;
    private readonly Dictionary<string, SafeTensorEntry> _entries;

    public string Path { get; }
    public IReadOnlyDictionary<string, string> Metadata { get; }
    public IEnumerable<SafeTensorEntry> Entries => _entries.Values;

    private SafeTensorsReader(string path, SafeFileHandle handle, Dictionary<string, SafeTensorEntry> entries, Dictionary<string, string> metadata)
    {
        Path = path;
        _handle = handle;
        _entries = entries;
        Metadata = metadata;
    }

    public static SafeTensorsReader Open(string path)
    {
        if (!File.Exists(path)) throw new ModelFormatException($"The weights file '{path}' does not exist.");
        var handle = File.OpenHandle(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        try
        {
            var (entries, metadata) = ReadHeader(handle, path);
            return new SafeTensorsReader(path, handle, entries, metadata);
        }
        catch
        {
            handle.Dispose();
            throw;
        }
    }

    public bool Contains(string name) => _entries.ContainsKey(name);

    public SafeTensorEntry Entry(string name) =>
        _entries.TryGetValue(name, out var entry) ? entry : throw new KeyNotFoundException($"'{Path}' has no tensor '{name}'.");

    /// <summary>Reads one tensor onto the CPU in its stored dtype. The caller owns (disposes) it.</summary>
    public Tensor Read(string name)
    {
        var entry = Entry(name);
        var tensor = empty(entry.Shape, entry.ScalarType, CPU);
        try
        {
            if (entry.Length > 0) SafeTensors.ReadInto(_handle, entry.Offset, tensor);
            return tensor;
        }
        catch
        {
            tensor.Dispose();
            throw;
        }
    }

    public void Dispose() => _handle.Dispose();

    private static (Dictionary<string, SafeTensorEntry>, Dictionary<string, string>) ReadHeader(SafeFileHandle handle, string path)
    {
        long fileLength = RandomAccess.GetLength(handle);
        Span<byte> lengthBytes = stackalloc byte[8];
        if (fileLength < 8 || RandomAccess.Read(handle, lengthBytes, 0) != 8)
            throw new ModelFormatException($"'{path}' is too short to be a safetensors file.");
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength > 100_000_000 || (long)headerLength > fileLength - 8)
            throw new ModelFormatException($"'{path}' is not a safetensors file (header length {headerLength} does not fit the file). Is it a Git LFS pointer or a .bin checkpoint?");
        byte[] headerBytes = new byte[headerLength];
        if (RandomAccess.Read(handle, headerBytes, 8) != (int)headerLength)
            throw new ModelFormatException($"'{path}' ends inside its header; the file is truncated.");
        long dataStart = 8 + (long)headerLength;

        var entries = new Dictionary<string, SafeTensorEntry>(StringComparer.Ordinal);
        var metadata = new Dictionary<string, string>();
        try
        {
            using var document = JsonDocument.Parse(headerBytes);
            foreach (var property in document.RootElement.EnumerateObject())
            {
                if (property.Name == "__metadata__")
                {
                    foreach (var m in property.Value.EnumerateObject())
                        metadata[m.Name] = m.Value.ValueKind == JsonValueKind.String ? m.Value.GetString()! : m.Value.GetRawText();
                    continue;
                }
                var value = property.Value;
                string dtype = value.GetProperty("dtype").GetString() ?? "";
                long[] shape = value.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64()).ToArray();
                var offsets = value.GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt64()).ToArray();
                if (offsets.Length != 2 || offsets[0] < 0 || offsets[1] < offsets[0] || dataStart + offsets[1] > fileLength)
                    throw new ModelFormatException($"'{path}': tensor '{property.Name}' has data_offsets [{string.Join(", ", offsets)}] outside the file; the file is truncated or corrupt.");
                var entry = new SafeTensorEntry(property.Name, dtype, shape, dataStart + offsets[0], offsets[1] - offsets[0]);
                long expected = shape.Aggregate(1L, (a, b) => a * b) * TorchSharp.TensorExtensionMethods.ElementSize(entry.ScalarType);
                if (expected != entry.Length)
                    throw new ModelFormatException($"'{path}': tensor '{property.Name}' ({dtype} [{string.Join(", ", shape)}]) should take {expected} bytes but takes {entry.Length}.");
                entries[property.Name] = entry;
            }
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or KeyNotFoundException or FormatException)
        {
            throw new ModelFormatException($"'{path}' has a malformed safetensors header: {e.Message}", e);
        }
        return (entries, metadata);
    }
}

/// <summary>
/// All weights of a model folder: model.safetensors, or the shards named by model.safetensors.index.json.
/// Tensors are read one at a time; files stay open until disposed.
/// </summary>
public sealed class SafeTensorsCheckpoint : IDisposable
{
    private readonly List<SafeTensorsReader> _files;
    private readonly Dictionary<string, SafeTensorsReader> _byName;

    private SafeTensorsCheckpoint(List<SafeTensorsReader> files)
    {
        _files = files;
        _byName = new Dictionary<string, SafeTensorsReader>(StringComparer.Ordinal);
        foreach (var file in files)
            foreach (var entry in file.Entries)
                if (!_byName.TryAdd(entry.Name, file))
                    throw new ModelFormatException($"Tensor '{entry.Name}' is in both '{_byName[entry.Name].Path}' and '{file.Path}'.");
    }

    public IReadOnlyCollection<string> Names => _byName.Keys;

    public IEnumerable<SafeTensorEntry> Entries => _files.SelectMany(f => f.Entries);

    /// <summary>Every tensor in the order it lies on disk (file by file, by offset): sequential reads.</summary>
    public IEnumerable<SafeTensorEntry> InFileOrder => _files.SelectMany(f => f.Entries.OrderBy(e => e.Offset));

    /// <summary>Bytes of tensor data in all files.</summary>
    public long TotalBytes => Entries.Sum(e => e.Length);

    public bool Contains(string name) => _byName.ContainsKey(name);

    public SafeTensorEntry Entry(string name) => FileOf(name).Entry(name);

    /// <summary>Reads one tensor onto the CPU in its stored dtype. The caller owns it.</summary>
    public Tensor Read(string name) => FileOf(name).Read(name);

    public static SafeTensorsCheckpoint Open(string folder)
    {
        string index = Path.Combine(folder, "model.safetensors.index.json");
        string single = Path.Combine(folder, "model.safetensors");
        IEnumerable<string> paths;
        if (File.Exists(index)) paths = ShardsOf(index, folder);
        else if (File.Exists(single)) paths = [single];
        else
        {
            // Shards without an index (model-00001-of-00002.safetensors ...); not adapter_model.safetensors or other files.
            var any = Directory.Exists(folder) ? Directory.GetFiles(folder, "model*.safetensors").Order(StringComparer.Ordinal).ToArray() : [];
            bool hasBin = Directory.Exists(folder) && Directory.GetFiles(folder, "*.bin").Length > 0;
            if (any.Length == 0)
                throw new ModelFormatException(hasBin
                    ? $"'{folder}' holds only PyTorch .bin weights; save the model as safetensors (model.save_pretrained(..., safe_serialization=True))."
                    : $"'{folder}' has no model.safetensors (or model.safetensors.index.json).");
            paths = any;
        }

        var files = new List<SafeTensorsReader>();
        try
        {
            foreach (var path in paths) files.Add(SafeTensorsReader.Open(path));
            return new SafeTensorsCheckpoint(files);
        }
        catch
        {
            foreach (var f in files) f.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        foreach (var file in _files) file.Dispose();
    }

    private SafeTensorsReader FileOf(string name) =>
        _byName.TryGetValue(name, out var file) ? file : throw new KeyNotFoundException($"The checkpoint has no tensor '{name}'.");

    private static IEnumerable<string> ShardsOf(string indexPath, string folder)
    {
        try
        {
            using var document = JsonDocument.Parse(File.ReadAllBytes(indexPath));
            var map = document.RootElement.GetProperty("weight_map");
            var shards = map.EnumerateObject().Select(p => p.Value.GetString() ?? "").Distinct().Order(StringComparer.Ordinal).ToList();
            foreach (var shard in shards)
            {
                string path = Path.Combine(folder, shard);
                if (shard.Contains("..") || Path.IsPathRooted(shard))
                    throw new ModelFormatException($"'{indexPath}' names shard '{shard}' outside the model folder.");
                if (!File.Exists(path))
                    throw new ModelFormatException($"'{indexPath}' names shard '{shard}', which is missing; the download is incomplete.");
            }
            return shards.Select(s => Path.Combine(folder, s)).ToList();
        }
        catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException)
        {
            throw new ModelFormatException($"'{indexPath}' is not a valid safetensors index: {e.Message}", e);
        }
    }
}
