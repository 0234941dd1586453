using FineTune.Engine.Data;
using FineTune.Engine.Training;

namespace FineTune.Tests.Training;

public class MicroBatchGraphsTests
{
    [Fact]
    public void Only_shapes_that_repeat_get_a_graph_the_most_frequent_first()
    {
        var dense = new BatchShape(4, 512, false, 2044, 4, 512);
        var thrice = new BatchShape(1, 1400, true, 700, 8, 240);
        var twice = new BatchShape(1, 1385, true, 690, 8, 240);
        Assert.Equal([dense, thrice], MicroBatchGraphs.RepeatingShapes([dense, thrice, twice, dense, thrice, dense, twice, thrice]).OrderBy(s => s.Tokens == 512 ? 0 : 1));
        Assert.Equal([dense], MicroBatchGraphs.RepeatingShapes(Enumerable.Repeat(dense, 30)));

        // At most MaxGraphs shapes, those that come most often.
        var many = Enumerable.Range(0, 20).SelectMany(i => Enumerable.Repeat(new BatchShape(1, 100 + i, true, 50, 2, 60), i % 5 + 6)).ToList();
        var chosen = MicroBatchGraphs.RepeatingShapes(many);
        Assert.Equal(MicroBatchGraphs.MaxGraphs, chosen.Count);
        Assert.All(chosen, s => Assert.True(many.Count(m => m == s) >= 7, $"{s} comes {many.Count(m => m == s)} times"));
    }

    [Fact]
    public void A_run_of_many_shapes_gets_no_graphs()
    {
        // Q&A rows packed by length: a few shapes come three times, most once; the repeating ones are a minority.
        var shapes = Enumerable.Range(0, 100).Select(i => new BatchShape(1, 1200 + i, true, 600 + i, 8, 200))
            .Concat(Enumerable.Repeat(new BatchShape(1, 1500, true, 750, 8, 200), 3)).ToList();
        Assert.Empty(MicroBatchGraphs.RepeatingShapes(shapes));
    }

    [Fact]
    public void A_run_gets_graphs_for_rows_of_one_length_and_none_for_rows_of_many()
    {
        var options = new TrainingOptions { BatchSize = 4, GradientAccumulationSteps = 2, Seed = 3 };
        static TrainingExample Row(int length) => new([.. Enumerable.Range(1, length)], [.. Enumerable.Range(0, length).Select(i => i < 4 ? TrainingExamples.IgnoreIndex : i)], 1);
        var dense = Enumerable.Range(0, 64).Select(_ => Row(32)).ToList();
        Assert.Equal([new BatchShape(4, 32, false, 4 * 28, 4, 32)], LoraTrainer.GraphShapesOf(dense, options));
        var random = new Random(5);
        var qa = Enumerable.Range(0, 64).Select(_ => Row(random.Next(20, 200))).ToList();
        Assert.Empty(LoraTrainer.GraphShapesOf(qa, options));
        // Padded to bucket lengths (where the host bounds the step), rows of many lengths repeat shapes and get graphs
        // (enough of them: 400 rows in 100 micro-batches of 4).
        var manyRows = Enumerable.Range(0, 400).Select(_ => Row(random.Next(20, 200))).ToList();
        Assert.Empty(LoraTrainer.GraphShapesOf(manyRows, options));
        var padded = LoraTrainer.GraphShapesOf(manyRows, options, padPackedRows: true);
        Assert.NotEmpty(padded);
        Assert.All(padded, s => Assert.Equal(Batching.BucketLength(s.Tokens), s.Tokens));

        // The run's plan: padding only where the host bounds the step and only where it is what makes shapes repeat.
        var paddedPlan = LoraTrainer.GraphPlanOf(manyRows, options, checkpointing: true);
        Assert.True(paddedPlan.PadPackedRows);
        Assert.True(paddedPlan.Shapes.SetEquals(padded));
        var unpaddedPlan = LoraTrainer.GraphPlanOf(manyRows, options, checkpointing: false);
        Assert.False(unpaddedPlan.PadPackedRows);
        Assert.Empty(unpaddedPlan.Shapes);
        var densePlan = LoraTrainer.GraphPlanOf(dense, options, checkpointing: true);
        Assert.False(densePlan.PadPackedRows);                                                // fixed-length rows repeat as they are
        Assert.Equal([new BatchShape(4, 32, false, 4 * 28, 4, 32)], densePlan.Shapes);
    }


    [Fact]
    public void Packed_rows_are_padded_where_the_host_bounds_the_step()
    {
        var packed = new TrainingOptions();
        Assert.True(LoraTrainer.PadsPackedRows(packed, checkpointing: true, dataParallel: false));   // QLoRA's default
        Assert.True(LoraTrainer.PadsPackedRows(packed, checkpointing: false, dataParallel: true));   // a replica's half of the rows
        Assert.False(LoraTrainer.PadsPackedRows(packed, checkpointing: false, dataParallel: false)); // 16-bit on one GPU: bound by the GPU
        Assert.False(LoraTrainer.PadsPackedRows(packed with { Layout = BatchLayout.LengthGrouped }, checkpointing: true, dataParallel: true));
    }
}
