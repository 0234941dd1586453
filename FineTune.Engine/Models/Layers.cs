using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Generation;
using FineTune.Engine.Kernels;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FineTune.Engine.Models;

#pragma warning disable IDE1006 // fields are named like the checkpoint keys (weight, gate_proj, ...)

/// <summary>Where and in which dtype a model's modules are built. Weights start on the meta device (no memory).</summary>
public sealed record ModelBuild(Device Device, ScalarType DType)
{
    /// <summary>A frozen parameter of this shape on the meta device; the loader replaces it with the checkpoint tensor.</summary>
    public static Parameter Placeholder(params long[] shape) =>
        new(empty(shape, device: META), requires_grad: false);

    public LoraLinear Linear(int inFeatures, int outFeatures, bool hasBias) =>
        new(inFeatures, outFeatures, hasBias, META, DType);
}

/// <summary>A module whose "weight" the loader fills from the checkpoint.</summary>
internal interface ICheckpointWeight
{
    /// <summary>Takes the checkpoint tensor (already on the model's device, in its dtype) as this module's weight.</summary>
    void LoadWeight(Tensor source);
}

/// <summary>Shared by the norm and embedding modules: one frozen "weight" that starts on the meta device.</summary>
public abstract class WeightModule : nn.Module<Tensor, Tensor>, ICheckpointWeight
{
    public Parameter weight;

    protected WeightModule(string name, long[] shape) : base(name)
    {
        weight = ModelBuild.Placeholder(shape);
        RegisterComponents();
    }

    public void LoadWeight(Tensor source)
    {
        if (!source.shape.SequenceEqual(weight.shape))
            throw new ModelFormatException(
                $"The checkpoint's weight has shape [{string.Join(", ", source.shape)}], but the {GetType().Name} expects [{string.Join(", ", weight.shape)}]. The config.json and the weights disagree.");
        using var _ = no_grad();
        if (weight.is_meta) Replace(new Parameter(source.detach().clone(), requires_grad: false));
        else weight.copy_(source);
    }

    /// <summary>Uses another module's weight object (tied input/output embeddings): one tensor, two users.</summary>
    internal void Share(Parameter shared) => Replace(shared);

    private void Replace(Parameter parameter)
    {
        parameter.DetachFromDisposeScope();
        var old = weight;
        weight = parameter;
        ConditionallyRegisterParameter(nameof(weight), parameter);
        if (!ReferenceEquals(old, parameter)) old.Dispose();
    }
}

/// <summary>
/// RMSNorm like HF LlamaRMSNorm / Qwen2RMSNorm: normalise in fp32, cast back to the input dtype,
/// then multiply by the weight: weight * (x / sqrt(mean(x²) + eps)).
/// </summary>
public sealed class RmsNorm : WeightModule
{
    private readonly double _eps;

    public RmsNorm(int size, double eps) : base(nameof(RmsNorm), [size])
    {
        _eps = eps;
    }

    public override Tensor forward(Tensor x)
    {
        return FusedOps.RmsNorm(x, weight, _eps); // one kernel on CUDA where no gradient flows; a fused autograd function where it does
    }

    /// <summary>
    /// The residual stream after a block, x + delta, and its norm: one kernel on CUDA where no gradient flows, which
    /// writes the sum over <paramref name="delta"/> (pass a block's output that is needed no more); else the add and
    /// <see cref="forward"/>.
    /// </summary>
    public (Tensor Sum, Tensor Normed) AddAndNorm(Tensor x, Tensor delta) => FusedOps.AddRmsNorm(x, delta, weight, _eps);
}

/// <summary>Token embedding table (vocab, hidden), as nn.Embedding; frozen.</summary>
public sealed class TokenEmbedding : WeightModule
{
    public TokenEmbedding(int vocab, int hidden) : base(nameof(TokenEmbedding), [vocab, hidden]) { }

    public override Tensor forward(Tensor inputIds)
    {
        using var scope = NewDisposeScope();
        long[] shape = [.. inputIds.shape, weight.shape[1]];
        var h = weight.index_select(0, inputIds.reshape(-1)).view(shape); // (B, T, H)
        return scope.MoveToOuter(h);
    }
}

/// <summary>
/// The checkpoint names of a SwiGLU MLP's projections, in the order the family's modeling file declares them (the order
/// LoRA layers are attached in, and so the order their seeded initialization follows).
/// </summary>
public sealed record SwiGluNames(string Gate, string Up, string Down)
{
    public IReadOnlyList<string> DeclarationOrder { get; init; } = [Gate, Up, Down];

    /// <summary>Llama, Mistral, Qwen2, Qwen3: down_proj(silu(gate_proj(x)) * up_proj(x)).</summary>
    public static readonly SwiGluNames Llama = new("gate_proj", "up_proj", "down_proj");

    /// <summary>Qwen v1's modeling_qwen.py: c_proj(w1(x) * silu(w2(x))), so w2 is the gate and w1 the up projection.</summary>
    public static readonly SwiGluNames QWen = new("w2", "w1", "c_proj") { DeclarationOrder = ["w1", "w2", "c_proj"] };
}

/// <summary>
/// The SwiGLU MLP: down(silu(gate(x)) * up(x)), SiLU·up fused (FusedOps.SiluMul). Llama/Mistral/Qwen2/Qwen3 name the
/// projections gate_proj/up_proj/down_proj, Qwen v1 w2/w1/c_proj (<see cref="SwiGluNames"/>); they are registered under
/// those checkpoint names, so weights load and LoRA targets match without a name map. Generation runs gate and up as one
/// stacked matmul (<see cref="StackedLinear"/>) and SiLU·up on its halves. Training on a GPU gives the product and down's
/// LoRA A to one function (<see cref="LoraLinear.ForwardOfSiluMul"/>), so the product is not kept for backward.
/// </summary>
public sealed class SwiGluMlp : nn.Module<Tensor, Tensor>, IStackedProjections
{
    // Kept in an array, not fields: TorchSharp registers a module's fields under their field names, and these are
    // registered once, under the checkpoint's names.
    private readonly LoraLinear[] _projections;

    public LoraLinear Gate => _projections[0];
    public LoraLinear Up => _projections[1];
    public LoraLinear Down => _projections[2];

    private readonly StackedLinear _gateUp;

    /// <summary>The gate and up projections as one matmul for generation (ModelLoader stacks them after loading).</summary>
    public IEnumerable<StackedLinear> Stacks => [_gateUp];

    public SwiGluMlp(ModelConfig config, ModelBuild build, SwiGluNames? names = null) : base(nameof(SwiGluMlp))
    {
        names ??= SwiGluNames.Llama;
        _projections =
        [
            build.Linear(config.HiddenSize, config.IntermediateSize, config.MlpBias),
            build.Linear(config.HiddenSize, config.IntermediateSize, config.MlpBias),
            build.Linear(config.IntermediateSize, config.HiddenSize, config.MlpBias),
        ];
        foreach (string name in names.DeclarationOrder)
            register_module(name, name == names.Gate ? Gate : name == names.Up ? Up : name == names.Down ? Down
                : throw new ArgumentException($"'{name}' is none of the MLP's names {names}.", nameof(names)));
        _gateUp = new StackedLinear(Gate, Up);
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var gateUp = _gateUp.Forward(x);                                                      // (B, T, 2·I), or null: one by one
        if (gateUp is null) return scope.MoveToOuter(Down.ForwardOfSiluMul(Gate.forward(x), Up.forward(x))); // (B, T, H)
        return scope.MoveToOuter(Down.forward(FusedOps.SiluMulHalves(gateUp)));              // (B, T, I) into (B, T, H)
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) _gateUp.Dispose();
        base.Dispose(disposing);
    }
}

/// <summary>
/// Rotary position embedding (HF *RotaryEmbedding): inv_freq = 1 / θ^(2i/d) in fp32, with the "linear" and
/// "llama3" rescalings; cos/sin for given position ids, computed in fp32 and cast to the activations' dtype.
/// </summary>
public sealed class RotaryEmbedding : nn.Module
{
    private readonly Tensor inv_freq; // (hD/2) fp32, a buffer like HF's (not in checkpoints)

    public RotaryEmbedding(int headDim, RopeSettings rope, Device device) : base(nameof(RotaryEmbedding))
    {
        inv_freq = InverseFrequencies(headDim, rope).to(device).DetachFromDisposeScope();
        RegisterComponents();
    }

    /// <summary>HF's _compute_default_rope_parameters and _compute_llama3_parameters; linear divides positions by factor.</summary>
    public static Tensor InverseFrequencies(int headDim, RopeSettings rope)
    {
        using var scope = NewDisposeScope();
        var exponents = arange(0, headDim, 2, ScalarType.Int64).to(ScalarType.Float32) / headDim;
        var invFreq = 1.0f / pow(tensor(rope.Theta, ScalarType.Float32), exponents); // (hD/2)
        if (rope.Type == "linear") invFreq = invFreq / rope.Factor;
        else if (rope.Type == "llama3") invFreq = Llama3Scaling(invFreq, rope);
        return scope.MoveToOuter(invFreq);
    }

    private static Tensor Llama3Scaling(Tensor invFreq, RopeSettings rope)
    {
        double oldContext = rope.OriginalMaxPositionEmbeddings!.Value;
        double lowFreqWavelen = oldContext / rope.LowFreqFactor;
        double highFreqWavelen = oldContext / rope.HighFreqFactor;
        var wavelen = 2 * Math.PI / invFreq;
        // Long wavelengths are divided by factor, short ones kept, the band between smoothly interpolated.
        var scaled = where(wavelen > lowFreqWavelen, invFreq / rope.Factor, invFreq);
        var smooth = (oldContext / wavelen - rope.LowFreqFactor) / (rope.HighFreqFactor - rope.LowFreqFactor);
        var smoothed = (1 - smooth) * scaled / rope.Factor + smooth * scaled;
        var isMedium = (wavelen >= highFreqWavelen).logical_and(wavelen <= lowFreqWavelen);
        return where(isMedium, smoothed, scaled);
    }

    /// <summary>cos and sin, each (B, T, hD), for position ids (B, T).</summary>
    public (Tensor Cos, Tensor Sin) Compute(Tensor positionIds, ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var freqs = positionIds.to(ScalarType.Float32).unsqueeze(-1) * inv_freq;  // (B, T, hD/2)
        var emb = cat([freqs, freqs], -1);                                          // (B, T, hD)
        var cos = emb.cos().to(dtype);
        var sin = emb.sin().to(dtype);
        return (scope.MoveToOuter(cos), scope.MoveToOuter(sin));
    }
}

/// <summary>Attention math shared by every family: RoPE, GQA head repetition, scaled dot-product attention.</summary>
public static class AttentionOps
{
    /// <summary>
    /// The tables <see cref="ApplyRotary"/> takes, from cos and sin (B, T, hD): cos (B, 1, T, hD) and sin with its first
    /// half negated (B, 1, T, hD). Made once per forward pass and shared by every layer.
    /// </summary>
    public static (Tensor Cos, Tensor SignedSin) RotaryTables(Tensor cos, Tensor sin)
    {
        using var scope = NewDisposeScope();
        long half = sin.shape[^1] / 2;
        var signedSin = cat([sin.narrow(-1, 0, half).neg(), sin.narrow(-1, half, half)], -1); // (B, T, hD)
        return (scope.MoveToOuter(cos.unsqueeze(1)), scope.MoveToOuter(signedSin.unsqueeze(1)));
    }

    /// <summary>
    /// HF's q·cos + rotate_half(q)·sin for x (B, nH, T, hD), with the tables of <see cref="RotaryTables"/>.
    /// rotate_half(x) = cat(−x2, x1) = roll(x, hD/2) with the first half negated, so rotate_half(x)·sin equals
    /// roll(x, hD/2)·signedSin exactly (negation is exact): four kernels instead of nine.
    /// </summary>
    public static Tensor ApplyRotary(Tensor x, Tensor cos, Tensor signedSin)
    {
        return FusedOps.Rotary(x, cos, signedSin); // (B, nH, T, hD); one kernel on CUDA where no gradient flows
    }

    /// <summary>
    /// RoPE on q (B, nH, T, hD) and k (B, nKV, T, hD), then k and v appended to the pass's KV cache if it has one:
    /// returns the rotated q and the keys and values attention reads, (B, nKV, S, hD). With a cache, RoPE and the store
    /// of a one-token pass are one kernel (<see cref="KvCache.RotateAndUpdate"/>).
    /// </summary>
    public static (Tensor Q, Tensor K, Tensor V) RotateAndCache(Tensor q, Tensor k, Tensor v, DecoderPass pass, int layer)
    {
        if (pass.Cache is not null) return pass.Cache.RotateAndUpdate(layer, q, k, v, pass.Cos, pass.SignedSin);
        return (ApplyRotary(q, pass.Cos, pass.SignedSin), ApplyRotary(k, pass.Cos, pass.SignedSin), v);
    }

    /// <summary>HF repeat_kv: (B, nKV, S, hD) → (B, nKV·groups, S, hD), each kv head repeated for its group of query heads.</summary>
    public static Tensor RepeatKv(Tensor x, int groups)
    {
        if (groups == 1) return x; // MHA: nothing to repeat (the caller's tensor, not a new one)
        var (b, nKv, s, d) = (x.shape[0], x.shape[1], x.shape[2], x.shape[3]);
        using var scope = NewDisposeScope();
        var y = x.unsqueeze(2).expand(b, nKv, groups, s, d).reshape(b, nKv * groups, s, d); // (B, nH, S, hD)
        return scope.MoveToOuter(y);
    }

    /// <summary>
    /// softmax(q·kᵀ/√hD + mask)·v for q (B, nH, T, hD) and k, v (B, nKV, S, hD); returns (B, T, nH·hD).
    /// </summary>
    public static Tensor Attend(Tensor q, Tensor k, Tensor v, AttentionMask mask)
    {
        using var scope = NewDisposeScope();
        long[] shape = q.shape;
        var (b, nH, t, d) = (shape[0], shape[1], shape[2], shape[3]);
        long nKv = k.shape[1];
        int groups = (int)(nH / nKv);
        Tensor y;
        if (t == 1 && groups > 1 && mask.Additive is null && !mask.IsCausal && !FusedOps.DecodeFoldsSuspended)
        {
            // One query that sees every key (decode): the group of query heads that share a kv head are that head's
            // queries, so q viewed as (B, nKV, groups, hD) attends the cache's own (B, nKV, S, hD) without repeated keys
            // and values; the result (B, nKV, groups, hD) holds its values in (B, 1, nH·hD) order.
            y = nn.functional.scaled_dot_product_attention(q.reshape(b, nKv, groups, d), k, v, null, 0.0, false); // (B, nKV, groups, hD)
            return scope.MoveToOuter(y.reshape(b, 1, nH * d));                                                 // (B, 1, nH·hD)
        }
        if (t > 1 && k.shape[2] == t && (mask.Packed is not null || (mask.IsCausal && mask.Additive is null))
            && FlashAttention.Handles(q.device, q.dtype, d))
            // Causal attention over the whole row or within each packed sequence: flash attention, with the kv heads as
            // they are (no repeat) and no mask. Elsewhere SDPA, with the packed row's block mask (mask.Additive).
            return scope.MoveToOuter(FlashAttention.Causal(q, k, v, mask.Packed));       // (B, T, nH·hD), kv heads not repeated
        var kk = RepeatKv(k, groups);                                                       // (B, nH, S, hD)
        var vv = RepeatKv(v, groups);                                                       // (B, nH, S, hD)
        y = nn.functional.scaled_dot_product_attention(q, kk, vv, mask.Additive, 0.0, mask.IsCausal); // (B, nH, T, hD)
        // One query (decode): (B, nH, 1, hD) holds its values in (B, 1, nH, hD) order already, so no transpose.
        y = t == 1 ? y.reshape(b, 1, nH * d) : y.transpose(1, 2).reshape(b, t, nH * d);   // (B, T, nH·hD)
        return scope.MoveToOuter(y);
    }
}

/// <summary>
/// What one attention layer may see: an additive mask (B|1, 1, T, S), or plain causal, or everything (one new token), or
/// causal within each of the packed sequences of one row (<see cref="Packed"/>, for flash attention; no mask then).
/// </summary>
public sealed record AttentionMask(Tensor? Additive, bool IsCausal, PackedSequences? Packed = null);

/// <summary>
/// Sequences packed one after another into one row (B = 1), by where each starts: (n + 1) int32 on the row's device,
/// 0, l0, l0 + l1, ..., T (flash attention's cu_seqlens), and the longest length. The block-diagonal causal mask of
/// the same row (<see cref="Data.Batching.BlockCausalMask"/>) says the same for kernels that take a mask.
/// </summary>
public sealed record PackedSequences(Tensor Starts, int Longest) : IDisposable
{
    /// <summary>
    /// The starts of sequences of <paramref name="lengths"/> on <paramref name="device"/>; <paramref name="longest"/>: a
    /// bound to state instead of the longest length (a CUDA graph bakes it in: padded micro-batches of one shape state the
    /// row's length, which bounds each of their sequences).
    /// </summary>
    public static PackedSequences Of(IReadOnlyList<int> lengths, Device device, int? longest = null)
    {
        var starts = new int[lengths.Count + 1];
        for (int i = 0; i < lengths.Count; i++) starts[i + 1] = starts[i] + lengths[i];
        if (longest < lengths.Max()) throw new ArgumentOutOfRangeException(nameof(longest), longest, "The stated bound is below the longest sequence.");
        return new PackedSequences(tensor(starts, device: device), longest ?? lengths.Max());
    }

    public void Dispose() => Starts.Dispose();
}

/// <summary>
/// Builds the attention masks of one forward pass, like HF's create_causal_mask / create_sliding_window_causal_mask:
/// causal over past + new positions, minus padded keys ((B, S) mask, 1 = real token), or an explicit (B, 1, T, S)
/// bool mask (true = may attend) such as the block-diagonal mask of packed sequences; optionally a sliding window.
/// Masked entries get the dtype's lowest value rather than −∞ so a row with nothing to see stays finite.
/// </summary>
public sealed class AttentionMaskBuilder : IDisposable
{
    private readonly int _queryLength;
    private readonly int _pastLength;
    private readonly Tensor? _mask;
    private readonly ScalarType _dtype;
    private readonly Device _device;
    private readonly Dictionary<int, AttentionMask> _built = [];
    private readonly PackedSequences? _packed;

    /// <param name="queryLength">T: new positions in this pass.</param>
    /// <param name="pastLength">Positions already in the KV cache.</param>
    /// <param name="mask">Null, (B, past+T) padding mask (1 = real), or (B, 1, T, past+T) bool.</param>
    /// <param name="packed">The sequences a packed row holds, which <paramref name="mask"/>'s block-diagonal mask describes (B = 1, no past).</param>
    public AttentionMaskBuilder(int queryLength, int pastLength, Tensor? mask, ScalarType dtype, Device device, PackedSequences? packed = null)
    {
        _queryLength = queryLength;
        _pastLength = pastLength;
        _mask = mask;
        _packed = packed;
        if (packed is not null && (mask is null || mask.dim() != 4 || mask.shape[0] != 1 || pastLength != 0))
            throw new ArgumentException("Packed sequences come with their (1, 1, T, T) block mask and no past positions.", nameof(packed));
        _dtype = dtype;
        _device = device;
        int keyLength = pastLength + queryLength;
        if (mask is not null && mask.dim() == 2 && mask.shape[1] != keyLength)
            throw new ArgumentException($"The attention mask covers {mask.shape[1]} positions, but past + new positions are {keyLength}; pass a (B, past + T) mask.", nameof(mask));
        if (mask is not null && mask.dim() == 4 && (mask.shape[1] != 1 || mask.shape[2] != queryLength || mask.shape[3] != keyLength))
            throw new ArgumentException($"A 4-D attention mask must be (B, 1, {queryLength}, {keyLength}); it is [{string.Join(", ", mask.shape)}].", nameof(mask));
        if (mask is not null && mask.dim() != 2 && mask.dim() != 4)
            throw new ArgumentException($"The attention mask must be (B, S) or (B, 1, T, S); it has {mask.dim()} dimensions.", nameof(mask));
    }

    /// <summary>
    /// The (B, 1, T, T) bool mask for rows that pack several sequences, found from their position ids (B, T): a new
    /// sequence starts wherever the position does not grow by one (usually back at 0). Each token attends causally
    /// within its own sequence only: what HF computes for packed rows (DataCollatorWithFlattening + position_ids).
    /// </summary>
    public static Tensor PackedCausalMask(Tensor positionIds)
    {
        if (positionIds.dim() != 2) throw new ArgumentException($"Position ids must be (B, T); they are [{string.Join(", ", positionIds.shape)}].", nameof(positionIds));
        using var scope = NewDisposeScope();
        long t = positionIds.shape[1];
        var positions = positionIds.to(ScalarType.Int64);
        var continues = positions.narrow(1, 1, t - 1).eq(positions.narrow(1, 0, t - 1).Plus(1L));     // (B, T-1)
        var starts = cat([ones([positions.shape[0], 1], ScalarType.Bool, positions.device), continues.logical_not()], 1);
        var sequence = starts.to(ScalarType.Int64).cumsum(1);                                     // (B, T) sequence number
        var same = sequence.unsqueeze(2).eq(sequence.unsqueeze(1));                               // (B, T, T)
        var causal = ones([t, t], ScalarType.Bool, positions.device).tril();                     // (T, T)
        return scope.MoveToOuter(same.logical_and(causal).unsqueeze(1));                          // (B, 1, T, T)
    }

    /// <summary>The mask for a layer; <paramref name="slidingWindow"/> null for full attention. Built once per window size.</summary>
    public AttentionMask For(int? slidingWindow)
    {
        int key = slidingWindow ?? 0;
        if (_built.TryGetValue(key, out var mask)) return mask;
        mask = Build(slidingWindow);
        _built[key] = mask;
        return mask;
    }

    private AttentionMask Build(int? window)
    {
        int keyLength = _pastLength + _queryLength;
        bool windowMatters = window is not null && keyLength > window.Value;
        if (_mask is null && !windowMatters)
        {
            if (_queryLength == 1) return new AttentionMask(null, false);   // one new token sees all keys
            if (_pastLength == 0) return new AttentionMask(null, true);     // plain causal: SDPA's fast path
        }

        using var scope = NewDisposeScope();
        var queryPositions = arange(_pastLength, keyLength, device: _device).unsqueeze(-1);  // (T, 1)
        var keyPositions = arange(0, keyLength, device: _device).unsqueeze(0);               // (1, S)
        Tensor allowed;
        if (_mask is not null && _mask.dim() == 4)
            allowed = _mask.to(ScalarType.Bool).to(_device);                                 // (B, 1, T, S)
        else
        {
            allowed = (keyPositions <= queryPositions).unsqueeze(0).unsqueeze(0);            // (1, 1, T, S)
            if (_mask is not null)
                allowed = allowed.logical_and(_mask.to(_device).ne(0).unsqueeze(1).unsqueeze(1)); // (B, 1, T, S)
        }
        if (window is not null)
            allowed = allowed.logical_and((queryPositions - keyPositions < window.Value).unsqueeze(0).unsqueeze(0));
        var additive = zeros(allowed.shape, _dtype, _device).masked_fill(allowed.logical_not(), finfo(_dtype).min);
        additive.DetachFromDisposeScope();
        // A window no packed sequence is longer than cuts nothing inside them: flash attention may take the sequences.
        bool packedCausal = _packed is not null && (window is null || _packed.Longest <= window.Value);
        return new AttentionMask(additive, false, packedCausal ? _packed : null);
    }

    /// <summary>
    /// A builder that outlives this pass's dispose scopes (gradient checkpointing builds the masks again in backward):
    /// it shares this one's tensors through handles of its own. Dispose it when backward is done.
    /// </summary>
    internal AttentionMaskBuilder Retain()
    {
        var retained = new AttentionMaskBuilder(_queryLength, _pastLength, _mask?.detach().DetachFromDisposeScope(), _dtype, _device, ownsMask: true,
            _packed is null ? null : _packed with { Starts = _packed.Starts.detach().DetachFromDisposeScope() });
        foreach (var (key, mask) in _built)
            retained._built[key] = mask with { Additive = mask.Additive?.detach().DetachFromDisposeScope(), Packed = mask.Packed is null ? null : retained._packed };
        return retained;
    }

    private readonly bool _ownsMask;

    private AttentionMaskBuilder(int queryLength, int pastLength, Tensor? mask, ScalarType dtype, Device device, bool ownsMask, PackedSequences? packed)
        : this(queryLength, pastLength, mask, dtype, device, packed) => _ownsMask = ownsMask;

    public void Dispose()
    {
        foreach (var mask in _built.Values) mask.Additive?.Dispose();
        _built.Clear();
        if (_ownsMask)
        {
            _mask?.Dispose();
            _packed?.Dispose();
        }
    }
}
