using FineTune.Engine.Adapters;
using FineTune.Engine.Models;
using static TorchSharp.torch;

namespace FineTune.Engine.Training;

/// <summary>A loaded <see cref="CausalLM"/> seen by the trainer (no KV cache while training).</summary>
public sealed class CausalLmTraining(CausalLM model) : ITrainableCausalLM
{
    public CausalLM Model { get; } = model;

    public nn.Module Module => Model;

    public LoraLinear LmHead => Model.lm_head;

    public bool GradientCheckpointing
    {
        get => Model.GradientCheckpointing;
        set => Model.GradientCheckpointing = value;
    }

    public double CheckpointedShare
    {
        get => Model.CheckpointedShare;
        set => Model.CheckpointedShare = value;
    }

    public Tensor HiddenStates(Tensor inputIds, Tensor positionIds, Tensor? attentionMask, PackedSequences? packed) =>
        Model.HiddenStates(inputIds, positionIds, attentionMask, packed: packed);

    public IEnumerable<(string Name, LoraLinear Layer)> NamedLinears() => Model.NamedLinears();
}
