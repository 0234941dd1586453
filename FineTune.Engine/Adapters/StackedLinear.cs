using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FineTune.Engine.Adapters;

/// <summary>
/// Projections of one input (q/k/v, gate/up) computed as one matmul where only their base weights act. After
/// <see cref="Stack"/> their weights are rows of one (Σout, in) tensor and their biases of one (Σout) tensor, each
/// layer's weight and bias a view of its rows, so checkpoint keys, saving, merging (in place) and attaching LoRA see the
/// layers as before and no weight is held twice. <see cref="Forward"/> serves no-gradient passes (generation) while
/// every layer still holds its views and none has an active adapter; otherwise the caller runs the layers one by one.
/// A layer whose weight is replaced (quantized, made dense) ends the stacking for good; the rows of the others stay
/// where they are (one storage, freed when the last view goes). The stacked matmul equals the separate ones within
/// rounding, not always bit for bit: for another width cuBLAS may pick another kernel (seen in bf16 at 7B sizes).
/// </summary>
public sealed class StackedLinear
{
    private readonly LoraLinear[] _layers;
    private Tensor? _weight;                                // (Σout, in)
    private Tensor? _bias;                                  // (Σout)
    private (Parameter Weight, Parameter? Bias)[] _views = [];

    public StackedLinear(params LoraLinear[] layers)
    {
        if (layers.Length < 2) throw new ArgumentException("Stacking needs at least two projections.", nameof(layers));
        _layers = layers;
    }

    /// <summary>True while <see cref="Forward"/> may run the stacked matmul (every layer still holds its rows).</summary>
    public bool IsStacked => _weight is not null;

    /// <summary>
    /// Moves the loaded dense weights (and biases) into one tensor each, the layers' own as views of their rows. Does
    /// nothing where they cannot be stacked: a layer quantized or not loaded, dtypes or devices that differ, bias on
    /// some layers only, or already stacked.
    /// </summary>
    public void Stack()
    {
        if (_weight is not null) return;
        var first = _layers[0];
        if (_layers.Any(l => l.weight is null || l.weight.is_meta || l.weight.dtype != first.weight!.dtype
                || l.weight.device_type != first.weight.device_type || l.weight.device_index != first.weight.device_index || l.InFeatures != first.InFeatures || (l.bias is null) != (first.bias is null)
                || (l.bias is not null && (l.bias.dtype != l.weight.dtype || l.bias.is_meta))))
            return;
        using var noGrad = no_grad();
        var weight = cat(_layers.Select(l => (Tensor)l.weight!).ToArray(), 0).DetachFromDisposeScope();                  // (Σout, in)
        var bias = first.bias is null ? null : cat(_layers.Select(l => (Tensor)l.bias!).ToArray(), 0).DetachFromDisposeScope(); // (Σout)
        var views = new (Parameter, Parameter?)[_layers.Length];
        long row = 0;
        for (int i = 0; i < _layers.Length; i++)
        {
            long rows = _layers[i].OutFeatures;
            views[i] = _layers[i].UseStackedRows(weight.narrow(0, row, rows), bias?.narrow(0, row, rows));
            row += rows;
        }
        (_weight, _bias, _views) = (weight, bias, views);
    }

    /// <summary>
    /// Every layer's output for x (..., in), side by side in the layers' order (..., Σout), from one matmul; null when the
    /// layers must run one by one (not stacked, a gradient to record, an active adapter, a weight replaced).
    /// </summary>
    public Tensor? Forward(Tensor x)
    {
        if (_weight is null || (is_grad_enabled() && x.requires_grad) || Kernels.FusedOps.DecodeFoldsSuspended) return null;
        for (int i = 0; i < _layers.Length; i++)
        {
            var layer = _layers[i];
            if (!ReferenceEquals(layer.weight, _views[i].Weight) || !ReferenceEquals(layer.bias, _views[i].Bias))
            {
                Unstack();
                return null;
            }
            if (layer.AdapterActive) return null;
        }
        return nn.functional.linear(x, _weight, _bias);
    }

    private void Unstack()
    {
        _weight?.Dispose();
        _bias?.Dispose();
        (_weight, _bias, _views) = (null, null, []);
    }
}

/// <summary>A module whose projections of one input can run stacked; <see cref="Models.CausalLM.StackProjections"/> stacks them.</summary>
public interface IStackedProjections
{
    IEnumerable<StackedLinear> Stacks { get; }
}
