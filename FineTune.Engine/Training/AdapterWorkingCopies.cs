using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FineTune.Engine.Training;

/// <summary>
/// The LoRA weights in the model's compute dtype (bf16 or fp16) for a training run, made from the fp32 weights once per
/// optimizer step instead of cast twice per projection and pass (a QLoRA step with checkpointing cast each adapter's two
/// weights four times, and every cast is a native call: the step is bound by the host's time per op).
/// <para>
/// The copies lie in one flat buffer in <see cref="FlatAdamW"/>'s layout, so one kernel refreshes them all; each copy is a
/// leaf of its own whose .grad is a view of a second flat buffer, where backward accumulates in place. The cast's backward
/// handed the fp32 weight exactly that gradient, cast up; <see cref="AccumulateGradients"/> adds the buffer to FlatAdamW's
/// fp32 gradients after each backward (one kernel) and zeroes it. Each adapter is used once per graph, so the 16-bit buffer
/// holds one gradient at a time (no 16-bit sums) and the fp32 gradients equal the casts' bit for bit.
/// </para>
/// </summary>
public sealed class AdapterWorkingCopies : IDisposable
{
    private readonly FlatAdamW _optimizer;
    private readonly IReadOnlyList<LoraLinear> _layers;
    private readonly Tensor _values;   // (N) compute dtype, FlatAdamW's layout
    private readonly Tensor _grads;    // (N) compute dtype, their gradients
    private readonly List<Parameter> _copies = [];

    private AdapterWorkingCopies(FlatAdamW optimizer, IReadOnlyList<LoraLinear> layers, ScalarType dtype)
    {
        _optimizer = optimizer;
        _layers = layers;
        using var _ = no_grad();
        var device = optimizer.Values.device;
        long total = optimizer.Values.shape[0];
        _values = empty(total, dtype: dtype, device: device).DetachFromDisposeScope();
        _grads = zeros(total, dtype: dtype, device: device).DetachFromDisposeScope();
        var offsets = new Dictionary<Parameter, long>(ReferenceEqualityComparer.Instance);
        long offset = 0;
        foreach (var p in optimizer.Parameters)
        {
            offsets[p] = offset;
            offset += p.numel();
        }
        foreach (var layer in layers)
            layer.ComputeCopies = (Copy(layer.lora_A!.weight!, offsets[layer.lora_A.weight!]), Copy(layer.lora_B!.weight!, offsets[layer.lora_B.weight!]));
        Refresh();
    }

    /// <summary>
    /// Copies for <paramref name="layers"/>' adapters when they compute in a 16-bit dtype from fp32 weights that are exactly
    /// <paramref name="optimizer"/>'s parameters; null otherwise (fp32 models use the weights as they are).
    /// </summary>
    public static AdapterWorkingCopies? For(FlatAdamW optimizer, IReadOnlyList<LoraLinear> layers)
    {
        if (layers.Count == 0 || layers.Any(l => !l.HasAdapter)) return null;
        var dtype = layers[0].OutputDtype;
        if (dtype is not (ScalarType.BFloat16 or ScalarType.Float16) || layers.Any(l => l.OutputDtype != dtype)) return null;
        var adapterWeights = layers.SelectMany(l => new[] { l.lora_A!.weight!, l.lora_B!.weight! }).ToHashSet(ReferenceEqualityComparer.Instance);
        if (adapterWeights.Count != optimizer.Parameters.Count || !optimizer.Parameters.All(adapterWeights.Contains)) return null;
        return new AdapterWorkingCopies(optimizer, layers, dtype);
    }

    private Tensor Copy(Parameter weight, long offset)
    {
        long n = weight.numel();
        using var valueSlice = _values.narrow(0, offset, n);
        using var value = valueSlice.view(weight.shape);
        using var placeholder = empty(weight.shape, dtype: _values.dtype, device: _values.device);
        var copy = new Parameter(placeholder, requires_grad: true);
        var repointed = copy.set_(value);                                      // the copy reads its slice of _values
        if (!ReferenceEquals(repointed, copy)) repointed.Dispose();
        using var gradSlice = _grads.narrow(0, offset, n);
        using var grad = gradSlice.view(weight.shape);
        copy.grad = grad;                                                      // backward accumulates into the slice of _grads
        copy.DetachFromDisposeScope();
        _copies.Add(copy);
        return copy;
    }

    /// <summary>The copies from the current fp32 weights: after each optimizer step (and a restore); one kernel.</summary>
    public void Refresh()
    {
        using var _ = no_grad();
        _values.copy_(_optimizer.Values);
    }

    /// <summary>Adds the copies' gradients of the backward just run to the fp32 gradients, and zeroes them: two kernels.</summary>
    public void AccumulateGradients()
    {
        using var _ = no_grad();
        _optimizer.Gradients.PlusInPlace(_grads);
        _grads.zero_();
    }

    public void Dispose()
    {
        foreach (var layer in _layers) layer.ComputeCopies = null;
        foreach (var copy in _copies) copy.Dispose();
        _copies.Clear();
        _values.Dispose();
        _grads.Dispose();
    }
}
