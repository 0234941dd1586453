using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FineTune.Engine.Adapters;

/// <summary>
/// Every linear projection of our models: y = x·Wᵀ + b, plus an optional LoRA path
/// B(A(dropout(x)))·scaling (PEFT lora.Linear). Parameter names equal the checkpoint's keys
/// ("weight", "bias") and PEFT's ("lora_A.weight", "lora_B.weight").
/// The base weight is frozen once an adapter is attached; it may also be held as NF4 (QLoRA).
/// </summary>
public sealed class LoraLinear : nn.Module<Tensor, Tensor>
{
    public int InFeatures { get; }
    public int OutFeatures { get; }

#pragma warning disable IDE1006 // names equal the checkpoint keys
    public Parameter? weight;   // (out, in); null while the base weight is held as NF4
    public Parameter? bias;     // (out)
#pragma warning restore IDE1006

    public LoraLinear(int inFeatures, int outFeatures, bool hasBias, Device? device = null, ScalarType? dtype = null)
        : base(nameof(LoraLinear))
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        weight = new Parameter(empty(outFeatures, inFeatures, dtype: dtype, device: device), requires_grad: false);
        bias = hasBias ? new Parameter(zeros(outFeatures, dtype: dtype, device: device), requires_grad: false) : null;
        RegisterComponents();
    }

    /// <summary>
    /// Copies a checkpoint weight (out, in) into this layer, converting dtype and device; a layer built
    /// on the meta device takes the source's device and dtype instead.
    /// </summary>
    public void LoadWeight(Tensor source)
    {
        if (weight is null) throw new InvalidOperationException("This layer holds its weight quantized; it cannot take a dense weight.");
        CheckShape(source, [OutFeatures, InFeatures], "weight");
        using var _ = no_grad();
        if (weight.is_meta) weight = Materialize(nameof(weight), weight, source);
        else weight.copy_(source);
    }

    /// <summary>Copies a checkpoint bias (out) into this layer.</summary>
    public void LoadBias(Tensor source)
    {
        if (bias is null) throw new InvalidOperationException("This layer was built without a bias.");
        CheckShape(source, [OutFeatures], "bias");
        using var _ = no_grad();
        if (bias.is_meta) bias = Materialize(nameof(bias), bias, source);
        else bias.copy_(source);
    }

    public override Tensor forward(Tensor x)
    {
        return nn.functional.linear(x, weight!, bias);
    }

    /// <summary>
    /// A layer built on the meta device holds no memory until its checkpoint tensor arrives (ModelLoader
    /// builds models that way); it then takes a copy of the source as given: its device and dtype.
    /// </summary>
    private Parameter Materialize(string name, Parameter placeholder, Tensor source)
    {
        var parameter = new Parameter(source.detach().clone(), requires_grad: placeholder.requires_grad);
        parameter.DetachFromDisposeScope();
        ConditionallyRegisterParameter(name, parameter);
        placeholder.Dispose();
        return parameter;
    }

    private static void CheckShape(Tensor source, long[] expected, string what)
    {
        if (!source.shape.SequenceEqual(expected))
            throw new ArgumentException($"The checkpoint's {what} has shape [{string.Join(", ", source.shape)}], but the layer expects [{string.Join(", ", expected)}]. The config.json and the weights disagree.");
    }
}
