using FineTune.Engine.Adapters;
using FineTune.Engine.Generation;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Models;

#pragma warning disable IDE1006 // lm_head is named like the checkpoint key

/// <summary>
/// What every layer of one forward pass shares: the RoPE tables of <see cref="AttentionOps.RotaryTables"/>
/// (cos and signed sin, (B, 1, T, hD)), the masks, the KV cache.
/// </summary>
public sealed record DecoderPass(Tensor Cos, Tensor SignedSin, AttentionMaskBuilder Masks, KvCache? Cache)
{
    /// <summary>How many decoder layers, the first ones, run through <see cref="GradientCheckpoint"/> when gradients are being recorded (int.MaxValue: all).</summary>
    public int CheckpointedLayers { get; init; }

    /// <summary>Whether layer <paramref name="index"/> (from 0) runs checkpointed.</summary>
    public bool Checkpoints(int index) => index < CheckpointedLayers;

    /// <summary>A pass for cos and sin (B, T, hD) as <see cref="RotaryEmbedding.Compute"/> returns them.</summary>
    public static DecoderPass Create(Tensor cos, Tensor sin, AttentionMaskBuilder masks, KvCache? cache, int checkpointedLayers = 0)
    {
        var (headCos, signedSin) = AttentionOps.RotaryTables(cos, sin);
        return new DecoderPass(headCos, signedSin, masks, cache) { CheckpointedLayers = checkpointedLayers };
    }

    private RetainedPass? _retained;

    /// <summary>
    /// This pass for a layer's backward, which runs after the pass's dispose scopes have ended: one copy with its
    /// own tensor handles, shared by the pass's layers and disposed when the last of them has run backward.
    /// </summary>
    internal RetainedPass RetainForBackward()
    {
        _retained ??= new RetainedPass(new DecoderPass(Cos.detach().DetachFromDisposeScope(), SignedSin.detach().DetachFromDisposeScope(), Masks.Retain(), null));
        _retained.AddUser();
        return _retained;
    }
}

/// <summary>A <see cref="DecoderPass"/> kept for backward; each user calls <see cref="Release"/> once.</summary>
internal sealed class RetainedPass(DecoderPass pass)
{
    private int _users;

    public DecoderPass Pass { get; } = pass;

    public void AddUser() => Interlocked.Increment(ref _users);

    public void Release()
    {
        if (Interlocked.Decrement(ref _users) != 0) return;
        Pass.Cos.Dispose();
        Pass.SignedSin.Dispose();
        Pass.Masks.Dispose();
    }
}

/// <summary>
/// A decoder-only language model loaded from a Hugging Face folder (one subclass per family). Parameter names
/// equal the checkpoint keys; every projection is a <see cref="LoraLinear"/>; base weights are frozen.
/// </summary>
public abstract class CausalLM : nn.Module<Tensor, Tensor>
{
    public LoraLinear lm_head;

    protected CausalLM(string name, ModelConfig config, ModelBuild build) : base(name)
    {
        Config = config;
        Build = build;
        lm_head = build.Linear(config.HiddenSize, config.VocabSize, hasBias: false);
    }

    public ModelConfig Config { get; }

    /// <summary>The device and dtype the weights live in.</summary>
    public ModelBuild Build { get; }

    public Device Device => Build.Device;

    public ScalarType DType => Build.DType;

    /// <summary>
    /// HF's gradient_checkpointing_enable(): while gradients are recorded, each decoder layer keeps only its input
    /// and runs again in backward (see <see cref="GradientCheckpoint"/>). Off by default.
    /// </summary>
    public bool GradientCheckpointing { get; set; }

    /// <summary>
    /// With <see cref="GradientCheckpointing"/> off, the share of decoder layers (the first ⌈share × layers⌉) that run
    /// checkpointed anyway. The trainer sets it per micro-batch: the run's share where the GPU holds the run only with some
    /// layers recomputed (TrainingOptions.CheckpointedShare), more for a micro-batch longer than most of the run's, so that
    /// the longest do not set the run's peak memory (LongMicroBatches). The first layers: backward reaches them last, when
    /// the others' activations are gone, so their recompute adds nothing to the peak. 0 by default.
    /// </summary>
    public double CheckpointedShare { get; set; }

    /// <summary>How many decoder layers of <paramref name="layers"/> a pass checkpoints: all with <see cref="GradientCheckpointing"/>, else <see cref="CheckpointedShare"/>'s.</summary>
    protected int CheckpointedLayers(int layers) =>
        // Less a hair before rounding up: a share of k / layers (TrainingMemory's choice) is k layers, not k + 1 by fp error.
        GradientCheckpointing ? int.MaxValue : (int)Math.Min(layers, Math.Ceiling(Math.Clamp(CheckpointedShare, 0, 1) * layers - 1e-9));

    /// <summary>The checkpoint key of the input embedding ("model.embed_tokens.weight", Qwen v1: "transformer.wte.weight").</summary>
    public abstract string EmbeddingKey { get; }

    internal abstract TokenEmbedding InputEmbedding { get; }

    /// <summary>
    /// The final-normed hidden states (B, T, H) for token ids (B, T) int64.
    /// <paramref name="positionIds"/> (B, T): default past..past+T-1; restart them per sequence when packing.
    /// <paramref name="attentionMask"/>: (B, past+T) with 1 for real tokens and 0 for padding, or (B, 1, T, past+T)
    /// bool, true where a query may attend a key (e.g. block-diagonal causal for packed sequences).
    /// <paramref name="cache"/>: holds the past positions; this pass's keys and values are appended.
    /// <paramref name="packed"/>: the sequences of a packed row whose block mask <paramref name="attentionMask"/> is (flash attention takes them instead).
    /// </summary>
    public Tensor HiddenStates(Tensor inputIds, Tensor? positionIds = null, Tensor? attentionMask = null, KvCache? cache = null, PackedSequences? packed = null)
    {
        if (inputIds.dim() != 2)
            throw new ArgumentException($"Token ids must be (B, T); they are [{string.Join(", ", inputIds.shape)}].", nameof(inputIds));
        using var scope = NewDisposeScope();
        var (b, t) = (inputIds.shape[0], (int)inputIds.shape[1]);
        int past = cache?.Length ?? 0;
        var ids = inputIds.to(ScalarType.Int64).to(Device);
        var positions = positionIds?.to(ScalarType.Int64).to(Device)
            ?? arange(past, past + t, dtype: ScalarType.Int64, device: Device).unsqueeze(0).expand(b, t); // (B, T)
        using var masks = new AttentionMaskBuilder(t, past, attentionMask, DType, Device, packed);
        var h = Decode(ids, positions, masks, cache); // (B, T, H)
        cache?.Advance(t);
        return scope.MoveToOuter(h);
    }

    /// <summary>Logits (B, T, V) in the model's dtype; see <see cref="HiddenStates"/> for the arguments.</summary>
    public Tensor Logits(Tensor inputIds, Tensor? positionIds = null, Tensor? attentionMask = null, KvCache? cache = null)
    {
        using var scope = NewDisposeScope();
        var logits = lm_head.forward(HiddenStates(inputIds, positionIds, attentionMask, cache)); // (B, T, V)
        return scope.MoveToOuter(logits);
    }

    /// <summary>Logits (B, T, V) for token ids (B, T), all positions causal.</summary>
    public override Tensor forward(Tensor inputIds) => Logits(inputIds);

    /// <summary>The family's decoder: embeddings, layers, final norm.</summary>
    protected abstract Tensor Decode(Tensor inputIds, Tensor positionIds, AttentionMaskBuilder masks, KvCache? cache);

    /// <summary>
    /// Every linear projection with its checkpoint key prefix (e.g. "model.layers.0.self_attn.q_proj"), in model
    /// order, lm_head last. With tied embeddings lm_head's weight is the embedding table: leave it dense and frozen.
    /// </summary>
    public IEnumerable<(string Name, LoraLinear Layer)> NamedLinears() =>
        named_modules().Where(m => m.module is LoraLinear && m.module != lm_head).Select(m => (m.name, (LoraLinear)m.module))
            .Append((nameof(lm_head), lm_head));

    /// <summary>
    /// Stacks each layer's projections of one input (q/k/v, gate/up) so generation runs them as one matmul
    /// (<see cref="StackedLinear"/>: the weights stay the layers' own, as views). ModelLoader does it before filling a
    /// model's dense weights (they load into the stacked rows) and again after loading (stacking what was loaded dense
    /// another way); layers held in 4 bits are left as they are.
    /// </summary>
    public void StackProjections()
    {
        foreach (var module in modules())
            if (module is IStackedProjections stacked)
                foreach (var stack in stacked.Stacks) stack.Stack(Device);
    }

    /// <summary>A KV cache for this model holding up to <paramref name="capacity"/> positions.</summary>
    public KvCache NewCache(int capacity) => new(Config.NumHiddenLayers, capacity);

    /// <summary>Tied input/output embeddings: the embedding uses lm_head's weight (one tensor).</summary>
    internal void TieEmbeddings()
    {
        if (lm_head.weight is null || lm_head.weight.is_meta)
            throw new InvalidOperationException("Load lm_head's weight before tying the embeddings to it.");
        InputEmbedding.Share(lm_head.weight);
    }
}
