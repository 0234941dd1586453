using FineTune.Web.Features.Coaching;

namespace FineTune.Tests.Web.Features.Coaching;

public class CurveReadingTests
{
    [Fact]
    public void Reads_the_tutorials_cases()
    {
        Assert.Equal(CurveKind.TooEarly, CurveReading.Read([2.0, 1.9], []));
        Assert.Equal(CurveKind.StillLearning, CurveReading.Read([3.0, 2.6, 2.2, 1.9, 1.6, 1.3], []));
        Assert.Equal(CurveKind.LevelledOff, CurveReading.Read([3.0, 2.0, 1.2, 1.0, 1.0, 0.99], []));
        Assert.Equal(CurveKind.Flat, CurveReading.Read([7.05, 7.04, 7.06, 7.05, 7.04, 7.05], []));
        Assert.Equal(CurveKind.Unstable, CurveReading.Read([2.0, 2.4, 2.9, 3.5, 4.2, 5.0], []));
        Assert.Equal(CurveKind.Unstable, CurveReading.Read([2.0, 1.9, double.NaN], []));
        // Training loss falls while the eval loss turns up: memorizing.
        Assert.Equal(CurveKind.Overfitting, CurveReading.Read([3.0, 2.4, 1.8, 1.2, 0.7, 0.3], [2.9, 2.5, 2.4, 2.6, 2.9]));
    }
}
