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

    /// <summary>
    /// Every epoch packs other rows together (its own shuffle), so its longest micro-batch may be longer than the first
    /// epoch's: the padded plan holds every micro-batch of every epoch, else a later one runs without a graph, its memory
    /// beside the graphs' pool. Here the first epoch's plan alone left some out (seen for each of these seeds).
    /// </summary>
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(4)]
    public void The_padded_plan_holds_every_micro_batch_of_every_epoch(int seed)
    {
        var options = new TrainingOptions { Epochs = 3, BatchSize = 4, GradientAccumulationSteps = 1, Seed = seed };
        static TrainingExample Row(int length) => new([.. Enumerable.Range(1, length)], [.. Enumerable.Range(0, length).Select(i => i < 4 ? TrainingExamples.IgnoreIndex : i)], 1);
        var random = new Random(seed);
        var rows = Enumerable.Range(0, 120).Select(_ => Row(random.Next(20, 400))).ToList();
        var plan = LoraTrainer.GraphPlanOf(rows, options);
        Assert.True(plan.PadPackedRows);
        for (int epoch = 0; epoch < options.Epochs; epoch++)
            foreach (var indices in LoraTrainer.EpochWindows(rows, options, epoch).SelectMany(w => w))
            {
                var bucket = Batching.ShapeOf(rows, indices, options.Layout, padToBucket: true);
                Assert.True(MicroBatchGraphs.SmallestHolding(plan.Shapes, bucket) is not null, $"epoch {epoch}: no planned shape holds {bucket}");
            }
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
        // Padded to bucket lengths, rows of many lengths share a few shapes (bucket lengths, one shape per length and sequence
        // count), which hold every micro-batch of the run.
        var manyRows = Enumerable.Range(0, 400).Select(_ => Row(random.Next(20, 200))).ToList();
        Assert.Empty(LoraTrainer.GraphShapesOf(manyRows, options));
        var padded = LoraTrainer.GraphShapesOf(manyRows, options, padPackedRows: true);
        Assert.NotEmpty(padded);
        Assert.All(padded, s => Assert.Equal(Batching.BucketLength(s.Tokens), s.Tokens));
        Assert.Equal(padded.Count, padded.Select(s => (s.Tokens, s.Sequences)).Distinct().Count());
        // Every micro-batch of the epoch fits one of them.
        var buckets = LoraTrainer.EpochWindows(manyRows, options, 0).SelectMany(w => w).Select(i => Batching.ShapeOf(manyRows, i, options.Layout, padToBucket: true)).ToList();
        Assert.All(buckets, b => Assert.NotNull(MicroBatchGraphs.SmallestHolding(padded, b)));

        // The run's plan: packed rows padded only where that is what makes shapes repeat.
        var paddedPlan = LoraTrainer.GraphPlanOf(manyRows, options);
        Assert.True(paddedPlan.PadPackedRows);
        Assert.True(paddedPlan.Shapes.SetEquals(padded));
        var groupedPlan = LoraTrainer.GraphPlanOf(manyRows, options with { Layout = BatchLayout.LengthGrouped });
        Assert.False(groupedPlan.PadPackedRows);                                              // rows side by side are not packed
        var densePlan = LoraTrainer.GraphPlanOf(dense, options);
        Assert.False(densePlan.PadPackedRows);                                                // fixed-length rows repeat as they are
        Assert.Equal([new BatchShape(4, 32, false, 4 * 28, 4, 32)], densePlan.Shapes);
    }

    /// <summary>Each bucket shape <paramref name="times"/> times: the micro-batches of that many epochs of the same rows.</summary>
    private static IEnumerable<BatchShape> Repeated(IEnumerable<BatchShape> buckets, int times) => buckets.SelectMany(b => Enumerable.Repeat(b, times));

    [Fact]
    public void Padded_rows_go_to_the_smallest_shape_that_holds_them()
    {
        BatchShape Shape(int tokens, int targets, int sequences = 9) => new(1, tokens, true, targets, sequences, tokens);
        // Six micro-batches' bucket shapes: three lengths, one of them with two sequence counts; each coming often enough
        // (100 times a run) that every length is worth its own capture.
        BatchShape[] buckets = [Shape(1152, 448), Shape(1152, 512), Shape(1280, 384), Shape(1280, 384), Shape(1408, 640), Shape(1152, 320, sequences: 5)];
        var shapes = MicroBatchGraphs.PaddedShapes(Repeated(buckets, 100));
        Assert.Equal(new[] { Shape(1152, 512), Shape(1152, 320, 5), Shape(1280, 384), Shape(1408, 640) }.OrderBy(s => s.Tokens).ThenBy(s => s.Sequences),
            shapes.OrderBy(s => s.Tokens).ThenBy(s => s.Sequences));
        Assert.Equal(Shape(1152, 512), MicroBatchGraphs.SmallestHolding(shapes, Shape(1152, 448)));
        Assert.Equal(Shape(1408, 640), MicroBatchGraphs.SmallestHolding(shapes, Shape(1280, 500)));      // more targets than 1280's holds
        Assert.Equal(Shape(1408, 640), MicroBatchGraphs.SmallestHolding(shapes, Shape(1152, 600)));      // more than 1152's and 1280's
        Assert.Null(MicroBatchGraphs.SmallestHolding(shapes, Shape(1536, 100)));                        // longer than any: runs as it comes
        Assert.Null(MicroBatchGraphs.SmallestHolding(shapes, Shape(1152, 100, sequences: 3)));          // another row count

        // Once each: a capture costs more than padding them all to the longest, which then holds the most targets of all.
        Assert.Equal(new[] { Shape(1152, 320, 5), Shape(1408, 640) }, MicroBatchGraphs.PaddedShapes(buckets).OrderBy(s => s.Sequences));
    }

    [Fact]
    public void A_length_gets_its_own_graph_where_its_micro_batches_pay_for_the_capture()
    {
        BatchShape Shape(int tokens) => new(1, tokens, true, 256, 9, tokens);
        // 1152 comes 40 times: padding them to 1280 would cost 40 x 11% = 4.4 steps, more than a capture (2 steps); the single
        // 1024 costs 12.5% of a step padded to 1152. So 1152 and 1280 (the longest, always).
        var buckets = new[] { Shape(1024) }.Concat(Enumerable.Repeat(Shape(1152), 40)).Append(Shape(1280)).ToList();
        Assert.Equal([1152, 1280], MicroBatchGraphs.PaddedShapes(buckets).Select(s => s.Tokens).Order());
        // Three epochs of the same rows: the 1024 then comes three times, still cheaper padded (0.375 steps).
        Assert.Equal([1152, 1280], MicroBatchGraphs.PaddedShapes(Repeated(buckets, 3)).Select(s => s.Tokens).Order());

        // Twenty lengths each worth a capture: at most MaxGraphs, the longest among them.
        var many = Enumerable.Range(0, 20).Select(i => Shape(1024 + 64 * i)).ToList();
        var capped = MicroBatchGraphs.PaddedShapes(Repeated(many, 1000));
        Assert.InRange(capped.Count, 2, MicroBatchGraphs.MaxGraphs);
        Assert.Contains(capped, s => s.Tokens == 1024 + 64 * 19);
        Assert.All(many, b => Assert.NotNull(MicroBatchGraphs.SmallestHolding(capped, b)));
    }
}
