using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;
using static TorchSharp.torch;

namespace FineTune.Engine.Adapters;

/// <summary>
/// Reads and writes the safetensors format (8-byte little-endian header length, JSON header with
/// dtype/shape/data_offsets per tensor and an optional "__metadata__" of strings, then raw bytes),
/// as the Python safetensors library does. Used for PEFT adapters and merged exports.
/// </summary>
public static class SafeTensorsFile
{
    private static readonly Dictionary<ScalarType, string> DtypeNames = new()
    {
        [ScalarType.Float32] = "F32", [ScalarType.Float16] = "F16", [ScalarType.BFloat16] = "BF16",
        [ScalarType.Float64] = "F64", [ScalarType.Int64] = "I64", [ScalarType.Int32] = "I32",
        [ScalarType.Int16] = "I16", [ScalarType.Int8] = "I8", [ScalarType.Byte] = "U8", [ScalarType.Bool] = "BOOL",
    };

    /// <summary>Writes tensors (any device) sorted by name, with metadata such as {"format":"pt"}.</summary>
    public static void Save(string path, IReadOnlyDictionary<string, Tensor> tensors, IReadOnlyDictionary<string, string>? metadata = null)
    {
        var header = new JsonObject();
        if (metadata is { Count: > 0 })
        {
            var meta = new JsonObject();
            foreach (var (k, v) in metadata) meta[k] = v;
            header["__metadata__"] = meta;
        }
        var ordered = tensors.OrderBy(kv => kv.Key, StringComparer.Ordinal).ToList();
        var blobs = new List<byte[]>();
        long offset = 0;
        foreach (var (name, t) in ordered)
        {
            if (!DtypeNames.TryGetValue(t.dtype, out var dtypeName))
                throw new NotSupportedException($"Tensor '{name}' has dtype {t.dtype}, which safetensors export does not support here.");
            using var cpu = t.detach().cpu().contiguous();
            byte[] bytes = cpu.bytes.ToArray();
            blobs.Add(bytes);
            header[name] = new JsonObject
            {
                ["dtype"] = dtypeName,
                ["shape"] = new JsonArray([.. t.shape.Select(s => (JsonNode)s)]),
                ["data_offsets"] = new JsonArray(offset, offset + bytes.Length),
            };
            offset += bytes.Length;
        }
        byte[] headerBytes = Encoding.UTF8.GetBytes(header.ToJsonString());
        int pad = (8 - headerBytes.Length % 8) % 8; // the reference writer pads the header with spaces to 8 bytes
        if (pad > 0) headerBytes = [.. headerBytes, .. Enumerable.Repeat((byte)' ', pad)];

        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        using var stream = File.Create(path);
        Span<byte> length = stackalloc byte[8];
        BinaryPrimitives.WriteUInt64LittleEndian(length, (ulong)headerBytes.Length);
        stream.Write(length);
        stream.Write(headerBytes);
        foreach (var blob in blobs) stream.Write(blob);
    }

    /// <summary>Reads every tensor into CPU memory. The caller owns the tensors.</summary>
    public static Dictionary<string, Tensor> Load(string path) => Load(path, out _);

    public static Dictionary<string, Tensor> Load(string path, out Dictionary<string, string> metadata)
    {
        using var stream = File.OpenRead(path);
        Span<byte> lengthBytes = stackalloc byte[8];
        stream.ReadExactly(lengthBytes);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(lengthBytes);
        if (headerLength > 100_000_000 || (long)headerLength > stream.Length - 8)
            throw new InvalidDataException($"'{path}' is not a safetensors file (header length {headerLength}).");
        var headerBytes = new byte[headerLength];
        stream.ReadExactly(headerBytes);
        using var header = JsonDocument.Parse(headerBytes);
        long dataStart = 8 + (long)headerLength;
        metadata = [];
        var result = new Dictionary<string, Tensor>();
        foreach (var entry in header.RootElement.EnumerateObject())
        {
            if (entry.Name == "__metadata__")
            {
                foreach (var m in entry.Value.EnumerateObject()) metadata[m.Name] = m.Value.GetString() ?? "";
                continue;
            }
            string dtypeName = entry.Value.GetProperty("dtype").GetString()!;
            var dtype = DtypeNames.FirstOrDefault(kv => kv.Value == dtypeName).Key;
            if (!DtypeNames.ContainsValue(dtypeName))
                throw new NotSupportedException($"Tensor '{entry.Name}' in '{path}' has dtype {dtypeName}, which is not supported.");
            long[] shape = [.. entry.Value.GetProperty("shape").EnumerateArray().Select(e => e.GetInt64())];
            var offsets = entry.Value.GetProperty("data_offsets").EnumerateArray().Select(e => e.GetInt64()).ToArray();
            var bytes = new byte[offsets[1] - offsets[0]];
            stream.Seek(dataStart + offsets[0], SeekOrigin.Begin);
            stream.ReadExactly(bytes);
            var t = empty(shape, dtype);
            if (bytes.Length != t.numel() * t.ElementSize)
                throw new InvalidDataException($"Tensor '{entry.Name}' in '{path}' has {bytes.Length} bytes, but its shape and dtype need {t.numel() * t.ElementSize}.");
            if (bytes.Length > 0) t.bytes = bytes;
            result[entry.Name] = t;
        }
        return result;
    }
}
