using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Backend;

/// <summary>
/// Tensor arithmetic with a number, or tensor + tensor, without TorchSharp's temporary Scalars. TorchSharp 0.107 turns
/// each number (and the hidden alpha 1 of every tensor + tensor) into a finalizable Scalar, passes its native handle
/// to libtorch and keeps no reference while libtorch runs. A garbage collection on any other thread at that moment
/// lets the finalizer free the native at::Scalar in use: "INTERNAL ASSERT FAILED at c10/core/Scalar.h … toFloat",
/// now and then in long trainings (2 of 7 runs of 3,000 CPU steps; ScalarLifetimeTests reproduces it in seconds).
/// Here every Scalar is owned: the shared 1 is rooted for the life of the process, the others are disposed after the
/// call returns. dotnet/TorchSharp#1434 and #1496 fix it in TorchSharp itself; until one ships, hot code uses these.
/// </summary>
public static class ScalarArithmetic
{
    /// <summary>The alpha of a plain addition; a static root, so never finalized.</summary>
    private static readonly Scalar One = 1.ToScalar();

    /// <summary>a + b.</summary>
    public static Tensor Plus(this Tensor a, Tensor b) => a.add(b, One);

    /// <summary>a += b, in place.</summary>
    public static Tensor PlusInPlace(this Tensor a, Tensor b) => a.add_(b, One);

    /// <summary>a + value (an integer: the tensor's integer dtype is kept).</summary>
    public static Tensor Plus(this Tensor a, long value)
    {
        using var s = value.ToScalar();
        return a.add(s, One);
    }

    /// <summary>a + value.</summary>
    public static Tensor Plus(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.add(s, One);
    }

    /// <summary>a += value, in place.</summary>
    public static Tensor PlusInPlace(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.add_(s, One);
    }

    /// <summary>a + b · alpha.</summary>
    public static Tensor PlusScaled(this Tensor a, Tensor b, double alpha)
    {
        using var s = alpha.ToScalar();
        return a.add(b, s);
    }

    /// <summary>a · value.</summary>
    public static Tensor Times(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.mul(s);
    }

    /// <summary>a ·= value, in place.</summary>
    public static Tensor TimesInPlace(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.mul_(s);
    }

    /// <summary>a / value.</summary>
    public static Tensor DividedBy(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.div(s);
    }

    /// <summary>a /= value, in place.</summary>
    public static Tensor DividedByInPlace(this Tensor a, double value)
    {
        using var s = value.ToScalar();
        return a.div_(s);
    }
}
