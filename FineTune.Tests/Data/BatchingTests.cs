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
    }
}
