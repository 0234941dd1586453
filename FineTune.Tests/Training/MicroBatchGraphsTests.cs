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
    }
}
