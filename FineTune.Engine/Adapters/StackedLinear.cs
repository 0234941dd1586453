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
public sealed class StackedLinear : IDisposable
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
    /// Puts the layers' dense weights (and biases) into one tensor each, the layers' own becoming views of their rows.
    /// Loaded weights are copied there; weights not loaded yet (on the meta device, as ModelLoader builds them) get
    /// rows of a new tensor on <paramref name="device"/>, which the checkpoint then fills through the views, so stacking
    /// costs no memory at load. Does nothing where the layers cannot be stacked: a layer held in 4 bits, dtypes or
    /// devices that differ, bias on some layers only, some loaded and some not, or already stacked.
    /// </summary>
    public void Stack(Device? device = null)
    {
        if (_weight is not null) return;
        var first = _layers[0];
        if (first.weight is null) return;
        bool meta = first.weight.is_meta;
        if (meta && device is null) return;
        if (_layers.Any(l => l.weight is null || l.weight.is_meta != meta || l.weight.dtype != first.weight.dtype
                || l.weight.device_type != first.weight.device_type || l.weight.device_index != first.weight.device_index
                || l.InFeatures != first.InFeatures || (l.bias is null) != (first.bias is null)
                || (l.bias is not null && (l.bias.dtype != l.weight.dtype || l.bias.is_meta != meta))))
            return;
        using var noGrad = no_grad();
        using var scope = NewDisposeScope(); // the row views' own handles go with it (the layers hold parameters of their own)
        long rows = _layers.Sum(l => (long)l.OutFeatures);
        Tensor weight;
        Tensor? bias;
        if (meta)
        {
            weight = empty([rows, first.InFeatures], first.weight.dtype, device);                                      // (Σout, in)
            bias = first.bias is null ? null : empty([rows], first.weight.dtype, device);                              // (Σout)
        }
        else
        {
            weight = cat(_layers.Select(l => (Tensor)l.weight!).ToArray(), 0);                                          // (Σout, in)
            bias = first.bias is null ? null : cat(_layers.Select(l => (Tensor)l.bias!).ToArray(), 0);                 // (Σout)
        }
        weight.DetachFromDisposeScope();
        bias?.DetachFromDisposeScope();
        var views = new (Parameter, Parameter?)[_layers.Length];
        long row = 0;
        for (int i = 0; i < _layers.Length; i++)
        {
            long count = _layers[i].OutFeatures;
            views[i] = _layers[i].UseStackedRows(weight.narrow(0, row, count), bias?.narrow(0, row, count));
            row += count;
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
        if (!RowsStillViews() || _layers.Any(l => l.AdapterActive)) return null;
        return nn.functional.linear(x, _weight, _bias);
    }

    /// <summary>
    /// Every layer's base output (bias included, no adapter) for x (..., in) from one matmul, as column blocks (..., out)
    /// of its (..., Σout) in the layers' order; null when the layers must run one by one (not stacked, a weight replaced
    /// or trainable). Gradients reach x through the one matmul: backward joins the blocks' gradients (one copy) and
    /// multiplies once, where separate layers took a matmul each and added their results. For training, where q/k/v's
    /// narrow k and v (7B: 512 of 3,584 columns) fill the GPU worst.
    /// </summary>
    public Tensor[]? BaseOutputs(Tensor x)
    {
        if (_weight is null || !RowsStillViews() || _layers.Any(l => l.weight!.requires_grad || l.bias?.requires_grad == true)) return null;
        var y = nn.functional.linear(x, _weight, _bias);                                         // (..., Σout)
        return y.split([.. _layers.Select(l => (long)l.OutFeatures)], -1);                       // (..., out) each
    }

    /// <summary>Whether every layer still holds its views of the stacked rows; where one was replaced, the stacking ends for good.</summary>
    private bool RowsStillViews()
    {
        for (int i = 0; i < _layers.Length; i++)
            if (!ReferenceEquals(_layers[i].weight, _views[i].Weight) || !ReferenceEquals(_layers[i].bias, _views[i].Bias))
            {
                Unstack();
                return false;
            }
        return true;
    }

    private void Unstack()
    {
        _weight?.Dispose();
        _bias?.Dispose();
        (_weight, _bias, _views) = (null, null, []);
    }

    /// <summary>Lets go of the stacked tensors (the module that owns the layers does, when it is disposed).</summary>
    public void Dispose() => Unstack();
}

/// <summary>
/// A module whose projections of one input can run stacked; <see cref="Models.CausalLM.StackProjections"/> stacks them.
/// The module disposes its stacks with itself (they hold the layers' weight memory).
/// </summary>
public interface IStackedProjections
{
    IEnumerable<StackedLinear> Stacks { get; }
}
