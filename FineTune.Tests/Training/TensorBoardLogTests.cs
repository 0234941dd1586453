using System.Buffers.Binary;
using System.Text;
using FineTune.Engine.Training;

namespace FineTune.Tests.Training;

/// <summary>TensorBoard event files read back from their bytes (TFRecord framing, Event/Summary protobuf).</summary>
public sealed class TensorBoardLogTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("tensorboard-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    [Fact]
    public void Reports_become_scalars_with_hf_trainers_tags_and_pass_on_unchanged()
    {
        var passed = new List<TrainingProgress>();
        var log = new TensorBoardLog(_folder, new SynchronousProgress(passed.Add));
        var reports = new[]
        {
            new TrainingProgress(1, 3, 0.33, Loss: 2.5, LearningRate: 2e-4, GradNorm: 1.25, TokensPerSecond: 100),
            new TrainingProgress(2, 3, 0.67, Loss: 2.0, EvalLoss: 2.25, LearningRate: 1e-4, GradNorm: 1.0, TokensPerSecond: 110),
            new TrainingProgress(2, 3, 0.67, CheckpointPath: "/tmp/checkpoint-2"), // a checkpoint-only report: no scalars
        };
        foreach (var r in reports) log.Report(r);

        Assert.Equal(reports, passed);
        var scalars = TfEvents.Scalars(_folder);
        Assert.Equal([(1L, 2.5f), (2L, 2.0f)], scalars["train/loss"]);
        Assert.Equal([(2L, 2.25f)], scalars["eval/loss"]);
        Assert.Equal([(1L, 2e-4f), (2L, 1e-4f)], scalars["train/learning_rate"]);
        Assert.Equal([(1L, 1.25f), (2L, 1.0f)], scalars["train/grad_norm"]);
        Assert.Equal([(1L, 0.33f), (2L, 0.67f)], scalars["train/epoch"]);
        Assert.Equal(2, scalars["train/tokens_per_second"].Count);
    }

    private sealed class SynchronousProgress(Action<TrainingProgress> action) : IProgress<TrainingProgress>
    {
        public void Report(TrainingProgress value) => action(value);
    }
}

/// <summary>
/// Reads tfevents files: TFRecords (uint64 length, uint32 masked CRC, data, uint32 masked CRC) of Event protobufs
/// (step = 2, summary = 5 → Summary.value = 1 → Value.tag = 1, Value.simple_value = 2).
/// </summary>
public static class TfEvents
{
    public static Dictionary<string, List<(long Step, float Value)>> Scalars(string folder)
    {
        var result = new Dictionary<string, List<(long, float)>>();
        foreach (string file in Directory.EnumerateFiles(folder, "events.out.tfevents.*").Order())
        {
            byte[] bytes = File.ReadAllBytes(file);
            for (int at = 0; at < bytes.Length;)
            {
                long length = (long)BinaryPrimitives.ReadUInt64LittleEndian(bytes.AsSpan(at));
                var record = bytes.AsSpan(at + 12, (int)length);
                at += 12 + (int)length + 4;
                long step = 0;
                var summaries = new List<byte[]>();
                foreach (var (field, value, bytesValue) in Fields(record))
                {
                    if (field == 2) step = value;
                    if (field == 5) summaries.Add(bytesValue!);
                }
                foreach (var summary in summaries)
                    foreach (var (field, _, valueBytes) in Fields(summary))
                    {
                        if (field != 1) continue;
                        string? tag = null;
                        float? simple = null;
                        foreach (var (f, v, b) in Fields(valueBytes!))
                        {
                            if (f == 1) tag = Encoding.UTF8.GetString(b!);
                            if (f == 2) simple = BitConverter.Int32BitsToSingle((int)v);
                        }
                        if (tag is not null && simple is float s)
                            (result.TryGetValue(tag, out var list) ? list : result[tag] = []).Add((step, s));
                    }
            }
        }
        return result;
    }

    /// <summary>Top-level protobuf fields: (number, varint/fixed value, bytes for length-delimited).</summary>
    private static List<(int Field, long Value, byte[]? Bytes)> Fields(ReadOnlySpan<byte> data)
    {
        var fields = new List<(int, long, byte[]?)>();
        int at = 0;
        while (at < data.Length)
        {
            long key = Varint(data, ref at);
            int field = (int)(key >> 3), wire = (int)(key & 7);
            switch (wire)
            {
                case 0: fields.Add((field, Varint(data, ref at), null)); break;
                case 1: fields.Add((field, BinaryPrimitives.ReadInt64LittleEndian(data[at..]), null)); at += 8; break;
                case 2:
                    int length = (int)Varint(data, ref at);
                    fields.Add((field, 0, data.Slice(at, length).ToArray()));
                    at += length;
                    break;
                case 5: fields.Add((field, BinaryPrimitives.ReadInt32LittleEndian(data[at..]), null)); at += 4; break;
                default: throw new InvalidDataException($"protobuf wire type {wire} is not expected in an event file.");
            }
        }
        return fields;
    }

    private static long Varint(ReadOnlySpan<byte> data, ref int at)
    {
        long value = 0;
        for (int shift = 0; ; shift += 7)
        {
            byte b = data[at++];
            value |= (long)(b & 0x7F) << shift;
            if ((b & 0x80) == 0) return value;
        }
    }
}
