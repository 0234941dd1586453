using FineTune.Engine.Data;
using FineTune.Engine.Training;

namespace FineTune.Tests.Training;

public class MicroBatchGraphsTests
{
    [Fact]
    public void Only_shapes_that_repeat_get_a_graph_the_most_frequent_first()
    {
        var dense = new BatchShape(4, 512, false, 2044);
        var twice = new BatchShape(1, 1400, true, 700);
        var once = new BatchShape(1, 1385, true, 690);
        Assert.Equal([dense, twice], MicroBatchGraphs.RepeatingShapes([dense, twice, once, dense, twice, dense]).OrderBy(s => s.Tokens == 512 ? 0 : 1));
        Assert.Empty(MicroBatchGraphs.RepeatingShapes([once, twice, dense]));

        // Q&A rows of many lengths: at most MaxGraphs shapes, those that come most often.
        var many = Enumerable.Range(0, 20).SelectMany(i => Enumerable.Repeat(new BatchShape(1, 100 + i, true, 50), i % 5 + 1)).ToList();
        var chosen = MicroBatchGraphs.RepeatingShapes(many);
        Assert.Equal(MicroBatchGraphs.MaxGraphs, chosen.Count);
        Assert.All(chosen, s => Assert.True(many.Count(m => m == s) >= 4, $"{s} comes {many.Count(m => m == s)} times"));
    }
}
