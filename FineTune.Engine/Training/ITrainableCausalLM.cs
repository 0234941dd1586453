using FineTune.Engine.Adapters;
using FineTune.Engine.Models;
using static TorchSharp.torch;

namespace FineTune.Engine.Training;

/// <summary>
/// What the trainer needs of a causal language model. FineTune.Engine.Models' CausalLM satisfies it
/// directly or through a thin adapter (HiddenStates without a KV cache).
/// </summary>
public interface ITrainableCausalLM
{
    /// <summary>The module holding every parameter (train()/eval(), parameters(), to(device)).</summary>
    nn.Module Module { get; }

    /// <summary>
    /// Final hidden states (after the last norm), (B, T, H).
    /// <paramref name="attentionMask"/> is (B, 1, T, T) bool, true where a query may attend to a key,
    /// or null for plain causal attention over the whole sequence. <paramref name="packed"/>: the sequences of a packed
    /// row, which that mask describes block by block (attention may take them instead of the mask).
    /// </summary>
    Tensor HiddenStates(Tensor inputIds, Tensor positionIds, Tensor? attentionMask, PackedSequences? packed);

    /// <summary>
    /// Recompute each decoder layer's activations in backward instead of keeping them (HF gradient checkpointing).
    /// A model that cannot throws NotSupportedException when asked to.
    /// </summary>
    bool GradientCheckpointing { get; set; }

    /// <summary>
    /// With <see cref="GradientCheckpointing"/> off, the share of decoder layers that run checkpointed anyway for the next
    /// forward passes (CausalLM.CheckpointedShare): the trainer sets it per micro-batch (TrainingOptions.CheckpointedShare,
    /// LongMicroBatches). A model that
    /// cannot checkpoint some of its layers keeps all activations: only memory is at stake.
    /// </summary>
    double CheckpointedShare { get => 0; set { } }

    /// <summary>The output projection (H → vocabulary).</summary>
    LoraLinear LmHead { get; }

    /// <summary>Every linear layer with its module path as in the checkpoint ("model.layers.0.self_attn.q_proj").</summary>
    IEnumerable<(string Name, LoraLinear Layer)> NamedLinears();
}
