using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using static TorchSharp.torch;

namespace FineTune.Tests.Data;

public class BatchingTests
{
    public BatchingTests() => _ = ComputeBackend.Current;

    /// <summary>A row of <paramref name="length"/> tokens whose last <paramref name="targets"/> positions carry a loss.</summary>
    private static TrainingExample Row(int length, int targets) =>
        new([.. Enumerable.Range(1, length)], [.. Enumerable.Range(0, length).Select(i => i >= length - targets ? i + 2 : TrainingExamples.IgnoreIndex)], 1);

    public static TheoryData<int[], BatchLayout> Batches => new()
    {
        { new[] { 0 }, BatchLayout.Packed },            // one row: one sequence, no mask
        { new[] { 0, 1, 2 }, BatchLayout.Packed },      // lengths differ: one masked sequence
        { new[] { 0, 3 }, BatchLayout.Packed },         // one length: side by side, no mask
        { new[] { 0, 1, 2 }, BatchLayout.LengthGrouped }, // padded to the longest
        { new[] { 1 }, BatchLayout.LengthGrouped },
    };

    [Theory]
    [MemberData(nameof(Batches))]
    public void The_shape_told_before_collating_is_the_collated_batchs(int[] indices, BatchLayout layout)
    {
        TrainingExample[] rows = [Row(7, 3), Row(5, 5), Row(9, 2), Row(7, 1)];
        using var batch = Batching.Collate(rows, indices, layout, CPU);
        Assert.Equal(batch.Shape, Batching.ShapeOf(rows, indices, layout));
        Assert.Equal(batch.TargetCount, batch.Shape.Targets);
        using var padded = Batching.Collate(rows, indices, layout, CPU, padToBucket: true);
        Assert.Equal(padded.Shape, Batching.ShapeOf(rows, indices, layout, padToBucket: true));
    }

    [Fact]
    public void Rows_padded_to_a_larger_shape_fill_it_with_the_padding_sequence()
    {
        TrainingExample[] rows = [Row(7, 3), Row(5, 5), Row(9, 2)];
        var bucket = Batching.ShapeOf(rows, [0, 1, 2], BatchLayout.Packed, padToBucket: true); // 64 tokens, 64 target slots
        var larger = bucket with { Tokens = 96, Longest = 96, Targets = 80 };
        Assert.True(Batching.Fits(bucket, larger));
        using var batch = Batching.Collate(rows, [0, 1, 2], BatchLayout.Packed, CPU, padTo: larger);
        using var own = Batching.Collate(rows, [0, 1, 2], BatchLayout.Packed, CPU, padToBucket: true);
        Assert.Equal(larger, batch.Shape);
        Assert.Equal(own.InputIds.data<long>().ToArray()[..21], batch.InputIds.data<long>().ToArray()[..21]);
        Assert.Equal(new[] { 0, 7, 12, 21, 96 }, batch.Packed!.Starts.data<int>().ToArray());
        Assert.All(batch.TargetPositions.data<long>().ToArray()[10..], p => Assert.Equal(21, p));    // the extra ones at the padding
        Assert.Equal((21, 10), (batch.TokenCount, batch.TargetCount));
        // A shape that does not hold them is refused, not cut.
        Assert.False(Batching.Fits(bucket, bucket with { Tokens = 32, Longest = 32 }));
        Assert.False(Batching.Fits(bucket, bucket with { Targets = 8 }));
        Assert.False(Batching.Fits(bucket, bucket with { Sequences = 5 }));
        Assert.Throws<ArgumentException>(() => Batching.Collate(rows, [0, 1, 2], BatchLayout.Packed, CPU, padTo: bucket with { Targets = 8 }));
    }

    [Fact]
    public void A_placeholder_has_the_shape_a_graph_is_captured_for()
    {
        var shape = new BatchShape(1, 128, true, 40, 5, 128);
        using var placeholder = Batching.Placeholder(shape, CPU);
        Assert.Equal(shape, placeholder.Shape);
        Assert.Equal(new[] { 0, 1, 2, 3, 4, 128 }, placeholder.Packed!.Starts.data<int>().ToArray());
        Assert.Throws<ArgumentException>(() => Batching.Placeholder(new BatchShape(4, 512, false, 2044, 4, 512), CPU)); // not padded packed rows
    }

    [Fact]
    public void Bucket_lengths_are_eight_per_doubling_and_never_shorter()
    {
        Assert.Equal(64, Batching.BucketLength(1));
        Assert.Equal(64, Batching.BucketLength(64));
        Assert.Equal(72, Batching.BucketLength(65));
        Assert.Equal(1152, Batching.BucketLength(1025));
        int previous = 0;
        var lengths = new HashSet<int>();
        for (int n = 1; n <= 4096; n++)
        {
            int b = Batching.BucketLength(n);
            Assert.True(b >= n && b >= previous, $"{n} -> {b}");
            if (n > 64) Assert.True(b <= n * 1.125, $"{n} -> {b}: more than 12.5% padding");
            previous = b;
            if (n > 2048) lengths.Add(b);
        }
        Assert.Equal(8, lengths.Count); // 2049..4096: eight lengths
    }

    [Fact]
    public void Rows_padded_to_a_bucket_end_in_a_sequence_of_their_own_without_targets()
    {
        TrainingExample[] rows = [Row(7, 3), Row(5, 5), Row(9, 2)];
        using var batch = Batching.Collate(rows, [0, 1, 2], BatchLayout.Packed, CPU, padToBucket: true);
        using var plain = Batching.Collate(rows, [0, 1, 2], BatchLayout.Packed, CPU);
        Assert.Equal(new long[] { 1, 64 }, batch.InputIds.shape);          // 21 tokens + at least one of padding: 64
        Assert.Equal(plain.InputIds.data<long>().ToArray(), batch.InputIds.data<long>().ToArray()[..21]);
        Assert.Equal(plain.Targets.data<long>().ToArray(), batch.Targets.data<long>().ToArray()[..21]);
        Assert.All(batch.Targets.data<long>().ToArray()[21..], t => Assert.Equal(TrainingExamples.IgnoreIndex, t));
        Assert.Equal(Enumerable.Range(0, 43).Select(i => (long)i), batch.PositionIds.data<long>().ToArray()[21..]);
        // Starts: each row, then the padding; the stated longest is the row's length (a bound for every sequence).
        Assert.Equal(new[] { 0, 7, 12, 21, 64 }, batch.Packed!.Starts.data<int>().ToArray());
        Assert.Equal(64, batch.Packed.Longest);
        // The mask keeps the padding to itself.
        var mask = batch.AttentionMask!.reshape(64, 64);
        Assert.False(mask[30, ..21].any().item<bool>());
        Assert.False(mask[..21, 21..].any().item<bool>());
        // Target positions: the real ones first, then the first padding token up to the bucket length of their count.
        var positions = batch.TargetPositions.data<long>().ToArray();
        Assert.Equal(plain.TargetPositions.data<long>().ToArray(), positions[..10]);
        Assert.Equal(64, positions.Length);
        Assert.All(positions[10..], p => Assert.Equal(21, p));
        Assert.Equal((21, 10), (batch.TokenCount, batch.TargetCount)); // what the step counts: the real tokens and targets
    }
}
