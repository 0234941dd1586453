using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Backend;

/// <summary>
/// TorchSharp 0.107's managed autograd functions (autograd.SingleTensorFunction) hold memory longer than torch's own
/// nodes. Every output gets an empty_like twin, kept for gradients it might have to make of zeros (on the GPU real
/// memory at once), made in the caller's dispose scope; the saved tensors live until the graph is freed, not until
/// backward has run; and what backward receives and returns are managed handles that keep their tensors until a
/// garbage collection (backward runs on the autograd engine's thread, outside any dispose scope). The functions of the
/// engine (FusedOps.Training.cs, GradientCheckpoint) go through these helpers, which undo all three.
/// </summary>
internal static class ManagedAutograd
{
    /// <summary>
    /// <paramref name="apply"/> (a function's apply) in a dispose scope of its own: the outputs' twins go at once. The
    /// function must call ctx.set_materialize_grads(false) in forward, as the twins are what TorchSharp would fill.
    /// </summary>
    public static Tensor Apply(Func<Tensor> apply)
    {
        using var scope = NewDisposeScope();
        return scope.MoveToOuter(apply());
    }

    /// <summary><see cref="Apply(Func{Tensor})"/> for a function of several outputs (autograd.MultiTensorFunction).</summary>
    public static Tensor[] Apply(Func<List<Tensor>> apply)
    {
        using var scope = NewDisposeScope();
        var outputs = apply();
        foreach (var output in outputs) scope.MoveToOuter(output);
        return [.. outputs];
    }

    /// <summary>The saved tensors of <paramref name="ctx"/>, which are released by it now (the caller disposes the ones returned).</summary>
    public static List<Tensor> TakeSaved(autograd.AutogradContext ctx)
    {
        var saved = ctx.get_saved_variables();
        ctx.Dispose();
        return saved;
    }

    /// <summary>
    /// The gradients a backward returns, and the release of the previous backward's on this thread. The engine copies
    /// what backward returns, but the managed handles keep their own reference; by the next managed backward on the
    /// same thread (on CUDA each GPU's backward work runs on one engine thread) they are needed no more, so at most one
    /// backward's gradients wait instead of a whole step's.
    /// </summary>
    public static List<Tensor> Returned(params Tensor?[] gradients)
    {
        if (_returned is { } previous)
            foreach (var t in previous) t.Dispose();
        _returned = [.. gradients.OfType<Tensor>()];
        return [.. gradients.Select(g => g!)];
    }

    [ThreadStatic] private static List<Tensor>? _returned;
}
