using System.Buffers.Binary;
using System.Text;
using System.Text.Json;
using FineTune.Engine.Backend;
using FineTune.Engine.Models;
using static TorchSharp.torch;

namespace FineTune.Tests.Models;

public sealed class SafeTensorsTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("ft-safetensors-").FullName;

    public SafeTensorsTests() => _ = ComputeBackend.Current;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Fact]
    public void Round_trips_every_dtype_with_metadata_and_an_aligned_header()
    {
        using var scope = NewDisposeScope();
        var tensors = new Dictionary<string, Tensor>
        {
            ["a.f32"] = tensor(new float[] { 1.5f, -2.25f, 3e-8f, 7f, 0f, -0f }, [2, 3]),
            ["b.bf16"] = tensor(new float[] { 1f, -0.5f, 1024f, 3.140625f }).to(ScalarType.BFloat16),
            ["c.f16"] = tensor(new float[] { 0.25f, -65504f }).to(ScalarType.Float16),
            ["d.i64"] = tensor(new long[] { long.MaxValue, -1, 3 }),
            ["e.u8"] = tensor(new byte[] { 0, 255, 7 }),
            ["f.empty"] = zeros([0, 4]),
        };
        string path = Path.Combine(_folder, "t.safetensors");
        SafeTensors.Save(path, tensors, new Dictionary<string, string> { ["format"] = "pt" });

        using var reader = SafeTensorsReader.Open(path);
        Assert.Equal("pt", reader.Metadata["format"]);
        Assert.Equal(tensors.Keys.Order(), reader.Entries.Select(e => e.Name).Order());
        foreach (var (name, expected) in tensors)
        {
            using var actual = reader.Read(name);
            Assert.Equal(expected.dtype, actual.dtype);
            Assert.Equal(expected.shape, actual.shape);
            Assert.True(expected.eq(actual).all().item<bool>(), name);
        }

        // The format: u64 header length, JSON padded with spaces to 8 bytes, offsets relative to the data.
        byte[] bytes = File.ReadAllBytes(path);
        ulong headerLength = BinaryPrimitives.ReadUInt64LittleEndian(bytes);
        Assert.Equal(0UL, headerLength % 8);
        using var header = JsonDocument.Parse(Encoding.UTF8.GetString(bytes, 8, (int)headerLength).TrimEnd(' '));
        var bf16 = header.RootElement.GetProperty("b.bf16");
        Assert.Equal("BF16", bf16.GetProperty("dtype").GetString());
        Assert.Equal(8, bf16.GetProperty("data_offsets")[1].GetInt64() - bf16.GetProperty("data_offsets")[0].GetInt64());
        Assert.Equal(bytes.Length, 8 + (long)headerLength + tensors.Values.Sum(t => t.NumberOfElements * t.ElementSize));
    }

    [Fact]
    public void Reads_a_sharded_checkpoint_through_its_index()
    {
        using var checkpoint = SafeTensorsCheckpoint.Open(ModelFixtures.Folder("qwen2-v5"));
        Assert.Contains("lm_head.weight", checkpoint.Names);
        Assert.Contains("model.layers.2.mlp.down_proj.weight", checkpoint.Names);
        using var weight = checkpoint.Read("model.layers.0.self_attn.q_proj.bias");
        Assert.Equal(new long[] { 64 }, weight.shape);
        Assert.Equal(ScalarType.Float32, weight.dtype);
    }

    [Fact]
    public void Truncated_or_foreign_files_are_clear_errors()
    {
        string path = Path.Combine(_folder, "bad.safetensors");
        File.WriteAllText(path, "version https://git-lfs.github.com/spec/v1\noid sha256:abc\nsize 123\n");
        var error = Assert.Throws<ModelFormatException>(() => SafeTensorsReader.Open(path));
        Assert.Contains("not a safetensors file", error.Message);

        using (var scope = NewDisposeScope())
            SafeTensors.Save(path, new Dictionary<string, Tensor> { ["x"] = ones(100) });
        byte[] bytes = File.ReadAllBytes(path);
        File.WriteAllBytes(path, bytes[..^40]);
        var truncated = Assert.Throws<ModelFormatException>(() => SafeTensorsReader.Open(path));
        Assert.Contains("truncated", truncated.Message);

        var missing = Assert.Throws<ModelFormatException>(() => SafeTensorsCheckpoint.Open(_folder + "/nothing-here"));
        Assert.Contains("model.safetensors", missing.Message);
    }
}
