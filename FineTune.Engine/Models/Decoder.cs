using FineTune.Engine.Backend;
using FineTune.Engine.Generation;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FineTune.Engine.Models;

// The decoder every family shares, as HF's modular files share LlamaDecoderLayer / LlamaModel / LlamaForCausalLM:
// a pre-norm residual layer (norm → attention → add, norm → MLP → add), embeddings → layers → final norm, and the
// causal-LM head. A family supplies its attention and MLP (its file holds only those) and the checkpoint names of the
// shared modules, so parameter names stay the checkpoint keys: model.layers.N.self_attn.q_proj for Llama-style
// families, transformer.h.N.attn.c_attn for Qwen (v1). Modules are registered under those names (register_module),
// not as C# fields, because the names differ by family.

/// <summary>The attention block of a decoder layer: reads the normed residual stream (B, T, H), returns what is added to it.</summary>
public abstract class DecoderAttention : nn.Module
{
    protected DecoderAttention(string name) : base(name)
    {
    }

    public abstract Tensor forward(Tensor x, DecoderPass pass);
}

/// <summary>The checkpoint names of the shared decoder's modules.</summary>
public sealed record DecoderNames(
    string Model, string Embeddings, string Layers, string FinalNorm,
    string AttentionNorm, string Attention, string MlpNorm, string Mlp)
{
    /// <summary>HF's Llama names, which Mistral, Qwen2 and Qwen3 keep: model.embed_tokens, model.layers.N.{input_layernorm, self_attn, post_attention_layernorm, mlp}, model.norm.</summary>
    public static readonly DecoderNames Llama = new("model", "embed_tokens", "layers", "norm", "input_layernorm", "self_attn", "post_attention_layernorm", "mlp");
}

/// <summary>What a family plugs into the shared decoder.</summary>
/// <param name="Architecture">HF's architectures[0], e.g. "Qwen2ForCausalLM" (the module's name).</param>
/// <param name="Attention">The attention of layer N.</param>
/// <param name="Mlp">The MLP of a layer (most families: <see cref="SwiGluMlp"/>).</param>
/// <param name="RopeDType">The dtype of the RoPE tables; null: the hidden states' (Qwen v1 keeps them in fp32).</param>
public sealed record DecoderParts(
    string Architecture,
    DecoderNames Names,
    Func<ModelConfig, ModelBuild, int, DecoderAttention> Attention,
    Func<ModelConfig, ModelBuild, nn.Module<Tensor, Tensor>> Mlp,
    ScalarType? RopeDType = null);

public sealed class DecoderLayer : nn.Module
{
    private readonly RmsNorm _attentionNorm;
    private readonly DecoderAttention _attention;
    private readonly RmsNorm _mlpNorm;
    private readonly nn.Module<Tensor, Tensor> _mlp;

    public DecoderLayer(ModelConfig config, ModelBuild build, int layer, DecoderParts parts) : base(nameof(DecoderLayer))
    {
        var names = parts.Names;
        register_module(names.AttentionNorm, _attentionNorm = new RmsNorm(config.HiddenSize, config.RmsNormEps));
        register_module(names.Attention, _attention = parts.Attention(config, build, layer));
        register_module(names.MlpNorm, _mlpNorm = new RmsNorm(config.HiddenSize, config.RmsNormEps));
        register_module(names.Mlp, _mlp = parts.Mlp(config, build));
    }

    /// <summary>The modules are registered under the family's names in the constructor; the fields are not checkpoint names.</summary>
    protected override void RegisterComponents()
    {
    }

    public Tensor forward(Tensor x, DecoderPass pass)
    {
        using var scope = NewDisposeScope();
        // The attention's output is this layer's own: the add and the MLP's norm may write the sum over it (one kernel).
        var (h, normed) = _mlpNorm.AddAndNorm(x, _attention.forward(_attentionNorm.forward(x), pass)); // (B, T, H) each
        // Plus: tensor + tensor without TorchSharp's temporary alpha Scalar (see ScalarArithmetic).
        h = h.Plus(_mlp.forward(normed));                                                            // (B, T, H)
        return scope.MoveToOuter(h);
    }
}

public sealed class DecoderModel : nn.Module
{
    private readonly TokenEmbedding _embeddings;
    private readonly ModuleList<DecoderLayer> _layers;
    private readonly RmsNorm _norm;
    private readonly RotaryEmbedding _rotary;
    private readonly ScalarType? _ropeDType;

    public DecoderModel(ModelConfig config, ModelBuild build, DecoderParts parts) : base(nameof(DecoderModel))
    {
        var names = parts.Names;
        _ropeDType = parts.RopeDType;
        register_module(names.Embeddings, _embeddings = new TokenEmbedding(config.VocabSize, config.HiddenSize));
        register_module(names.Layers, _layers = new ModuleList<DecoderLayer>(
            Enumerable.Range(0, config.NumHiddenLayers).Select(i => new DecoderLayer(config, build, i, parts)).ToArray()));
        register_module(names.FinalNorm, _norm = new RmsNorm(config.HiddenSize, config.RmsNormEps));
        register_module("rotary_emb", _rotary = new RotaryEmbedding(config.HeadDim, config.Rope, build.Device));
    }

    /// <summary>The modules are registered under the family's names in the constructor; the fields are not checkpoint names.</summary>
    protected override void RegisterComponents()
    {
    }

    public TokenEmbedding Embeddings => _embeddings;

    public int LayerCount => _layers.Count;

    /// <param name="checkpointedLayers">How many layers, the first ones, run checkpointed while gradients are recorded.</param>
    public Tensor forward(Tensor inputIds, Tensor positionIds, AttentionMaskBuilder masks, KvCache? cache, int checkpointedLayers)
    {
        using var scope = NewDisposeScope();
        var h = _embeddings.forward(inputIds);                                    // (B, T, H)
        var (cos, sin) = _rotary.Compute(positionIds, _ropeDType ?? h.dtype);     // (B, T, hD)
        var pass = DecoderPass.Create(cos, sin, masks, cache, checkpointedLayers);
        for (int i = 0; i < _layers.Count; i++) h = GradientCheckpoint.Apply(_layers[i].forward, h, pass, pass.Checkpoints(i));
        return scope.MoveToOuter(_norm.forward(h));
    }
}

/// <summary>A decoder-only causal LM of any registered family: the shared decoder under the family's names, plus lm_head.</summary>
public sealed class DecoderForCausalLM : CausalLM
{
    private readonly DecoderModel _model;

    public DecoderForCausalLM(ModelConfig config, ModelBuild build, DecoderParts parts) : base(parts.Architecture, config, build)
    {
        register_module(parts.Names.Model, _model = new DecoderModel(config, build, parts));
        register_module(nameof(lm_head), lm_head);
        EmbeddingKey = $"{parts.Names.Model}.{parts.Names.Embeddings}.weight";
    }

    /// <summary>The modules are registered under the family's names in the constructor; the fields are not checkpoint names.</summary>
    protected override void RegisterComponents()
    {
    }

    public override string EmbeddingKey { get; }

    internal override TokenEmbedding InputEmbedding => _model.Embeddings;

    protected override Tensor Decode(Tensor inputIds, Tensor positionIds, AttentionMaskBuilder masks, KvCache? cache) =>
        _model.forward(inputIds, positionIds, masks, cache, CheckpointedLayers(_model.LayerCount));
}
