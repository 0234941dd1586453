using FineTune.Engine.Backend;
using FineTune.Engine.Adapters;
using FineTune.Engine.Generation;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FineTune.Engine.Models;

#pragma warning disable IDE1006 // fields are named like the checkpoint keys (HF modeling_llama.py / modeling_mistral.py)

// Llama (1/2/3, incl. llama3 rope scaling) and Mistral: GQA attention with optional bias (attention_bias),
// RoPE, SwiGLU MLP, RMSNorm; Mistral adds a sliding window. Checkpoint keys: model.embed_tokens,
// model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp.{gate,up,down}_proj},
// model.norm, lm_head.

public sealed class LlamaAttention : nn.Module
{
    public readonly LoraLinear q_proj;
    public readonly LoraLinear k_proj;
    public readonly LoraLinear v_proj;
    public readonly LoraLinear o_proj;
    private readonly int _layer, _heads, _kvHeads, _headDim;
    private readonly int? _window;

    public LlamaAttention(ModelConfig config, ModelBuild build, int layer) : base(nameof(LlamaAttention))
    {
        (_layer, _heads, _kvHeads, _headDim) = (layer, config.NumAttentionHeads, config.NumKeyValueHeads, config.HeadDim);
        _window = config.IsSlidingLayer(layer) ? config.SlidingWindow : null;
        q_proj = build.Linear(config.HiddenSize, _heads * _headDim, config.AttentionBias);
        k_proj = build.Linear(config.HiddenSize, _kvHeads * _headDim, config.AttentionBias);
        v_proj = build.Linear(config.HiddenSize, _kvHeads * _headDim, config.AttentionBias);
        o_proj = build.Linear(_heads * _headDim, config.HiddenSize, config.AttentionBias);
        RegisterComponents();
    }

    public Tensor forward(Tensor x, DecoderPass pass)
    {
        using var scope = NewDisposeScope();
        var (b, t) = (x.shape[0], x.shape[1]);
        var q = q_proj.forward(x).view(b, t, _heads, _headDim).transpose(1, 2);   // (B, nH, T, hD)
        var k = k_proj.forward(x).view(b, t, _kvHeads, _headDim).transpose(1, 2); // (B, nKV, T, hD)
        var v = v_proj.forward(x).view(b, t, _kvHeads, _headDim).transpose(1, 2); // (B, nKV, T, hD)
        q = AttentionOps.ApplyRotary(q, pass.Cos, pass.SignedSin);
        k = AttentionOps.ApplyRotary(k, pass.Cos, pass.SignedSin);
        if (pass.Cache is not null) (k, v) = pass.Cache.Update(_layer, k, v);       // (B, nKV, S, hD)
        var y = AttentionOps.Attend(q, k, v, pass.Masks.For(_window));              // (B, T, nH·hD)
        return scope.MoveToOuter(o_proj.forward(y));
    }
}

public sealed class LlamaDecoderLayer : nn.Module
{
    public readonly RmsNorm input_layernorm;
    public readonly LlamaAttention self_attn;
    public readonly RmsNorm post_attention_layernorm;
    public readonly SwiGluMlp mlp;

    public LlamaDecoderLayer(ModelConfig config, ModelBuild build, int layer) : base(nameof(LlamaDecoderLayer))
    {
        input_layernorm = new RmsNorm(config.HiddenSize, config.RmsNormEps);
        self_attn = new LlamaAttention(config, build, layer);
        post_attention_layernorm = new RmsNorm(config.HiddenSize, config.RmsNormEps);
        mlp = new SwiGluMlp(config, build);
        RegisterComponents();
    }

    public Tensor forward(Tensor x, DecoderPass pass)
    {
        using var scope = NewDisposeScope();
        var h = x.Plus(self_attn.forward(input_layernorm.forward(x), pass));  // (B, T, H)
        h = h.Plus(mlp.forward(post_attention_layernorm.forward(h)));         // (B, T, H)
        return scope.MoveToOuter(h);
    }
}

public sealed class LlamaModel : nn.Module
{
    public readonly TokenEmbedding embed_tokens;
    public readonly ModuleList<LlamaDecoderLayer> layers;
    public readonly RmsNorm norm;
    public readonly RotaryEmbedding rotary_emb;

    public LlamaModel(ModelConfig config, ModelBuild build) : base(nameof(LlamaModel))
    {
        embed_tokens = new TokenEmbedding(config.VocabSize, config.HiddenSize);
        layers = new ModuleList<LlamaDecoderLayer>(
            Enumerable.Range(0, config.NumHiddenLayers).Select(i => new LlamaDecoderLayer(config, build, i)).ToArray());
        norm = new RmsNorm(config.HiddenSize, config.RmsNormEps);
        rotary_emb = new RotaryEmbedding(config.HeadDim, config.Rope, build.Device);
        RegisterComponents();
    }

    public Tensor forward(Tensor inputIds, Tensor positionIds, AttentionMaskBuilder masks, KvCache? cache, bool gradientCheckpointing = false)
    {
        using var scope = NewDisposeScope();
        var h = embed_tokens.forward(inputIds);                       // (B, T, H)
        var (cos, sin) = rotary_emb.Compute(positionIds, h.dtype);    // (B, T, hD)
        var pass = DecoderPass.Create(cos, sin, masks, cache, gradientCheckpointing);
        foreach (var layer in layers) h = GradientCheckpoint.Apply(layer.forward, h, pass);
        return scope.MoveToOuter(norm.forward(h));
    }
}

/// <summary>LlamaForCausalLM and MistralForCausalLM.</summary>
public sealed class LlamaForCausalLM : CausalLM
{
    public readonly LlamaModel model;

    public LlamaForCausalLM(ModelConfig config, ModelBuild build) : base(nameof(LlamaForCausalLM), config, build)
    {
        model = new LlamaModel(config, build);
        RegisterComponents();
    }

    public override string EmbeddingKey => "model.embed_tokens.weight";

    internal override TokenEmbedding InputEmbedding => model.embed_tokens;

    protected override Tensor Decode(Tensor inputIds, Tensor positionIds, AttentionMaskBuilder masks, KvCache? cache) =>
        model.forward(inputIds, positionIds, masks, cache, GradientCheckpointing);
}
