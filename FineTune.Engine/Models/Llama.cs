using FineTune.Engine.Adapters;
using static TorchSharp.torch;

namespace FineTune.Engine.Models;

#pragma warning disable IDE1006 // fields are named like the checkpoint keys (HF modeling_llama.py / modeling_mistral.py)

// Llama (1/2/3, incl. llama3 rope scaling) and Mistral: GQA attention with optional bias (attention_bias),
// RoPE, SwiGLU MLP, RMSNorm; Mistral adds a sliding window. Checkpoint keys: model.embed_tokens,
// model.layers.N.{input_layernorm, self_attn.{q,k,v,o}_proj, post_attention_layernorm, mlp.{gate,up,down}_proj},
// model.norm, lm_head. The layer, model and LM head are the shared decoder (Decoder.cs); Qwen2 and Qwen3 reuse
// this attention with their own biases and norms, as their HF modular files do.

/// <summary>Grouped-query attention with RoPE (HF's LlamaAttention): nH query heads share nKV key/value heads.</summary>
public class LlamaAttention : DecoderAttention
{
    public readonly LoraLinear q_proj;
    public readonly LoraLinear k_proj;
    public readonly LoraLinear v_proj;
    public readonly LoraLinear o_proj;
    private readonly int _layer, _heads, _kvHeads, _headDim;
    private readonly int? _window;

    public LlamaAttention(ModelConfig config, ModelBuild build, int layer)
        : this(nameof(LlamaAttention), config, build, layer, qkvBias: config.AttentionBias, outputBias: config.AttentionBias)
    {
    }

    protected LlamaAttention(string name, ModelConfig config, ModelBuild build, int layer, bool qkvBias, bool outputBias) : base(name)
    {
        (_layer, _heads, _kvHeads, _headDim) = (layer, config.NumAttentionHeads, config.NumKeyValueHeads, config.HeadDim);
        _window = config.IsSlidingLayer(layer) ? config.SlidingWindow : null;
        q_proj = build.Linear(config.HiddenSize, _heads * _headDim, qkvBias);
        k_proj = build.Linear(config.HiddenSize, _kvHeads * _headDim, qkvBias);
        v_proj = build.Linear(config.HiddenSize, _kvHeads * _headDim, qkvBias);
        o_proj = build.Linear(_heads * _headDim, config.HiddenSize, outputBias);
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, DecoderPass pass)
    {
        using var scope = NewDisposeScope();
        var (b, t) = (x.shape[0], x.shape[1]);
        Tensor q, k, v;
        if (t == 1)
        {
            // One new token (decode): (B, 1, n, hD) and (B, n, 1, hD) are the same memory, so one view makes the heads
            // (the per-head norms see the same rows): decode is bound by the host's time per op.
            q = QueryNorm(q_proj.forward(x).view(b, _heads, 1, _headDim));                  // (B, nH, 1, hD)
            k = KeyNorm(k_proj.forward(x).view(b, _kvHeads, 1, _headDim));                   // (B, nKV, 1, hD)
            v = v_proj.forward(x).view(b, _kvHeads, 1, _headDim);                            // (B, nKV, 1, hD)
        }
        else
        {
            // One matmul for q, k and v where their base weights are NF4 (LoraLinear.ForwardShared).
            var qkv = LoraLinear.ForwardShared(x, q_proj, k_proj, v_proj);                   // (B, T, nH·hD), (B, T, nKV·hD) ×2
            q = QueryNorm(qkv[0].view(b, t, _heads, _headDim)).transpose(1, 2);              // (B, nH, T, hD)
            k = KeyNorm(qkv[1].view(b, t, _kvHeads, _headDim)).transpose(1, 2);              // (B, nKV, T, hD)
            v = qkv[2].view(b, t, _kvHeads, _headDim).transpose(1, 2);                       // (B, nKV, T, hD)
        }
        q = AttentionOps.ApplyRotary(q, pass.Cos, pass.SignedSin);
        k = AttentionOps.ApplyRotary(k, pass.Cos, pass.SignedSin);
        if (pass.Cache is not null) (k, v) = pass.Cache.Update(_layer, k, v);                // (B, nKV, S, hD)
        var y = AttentionOps.Attend(q, k, v, pass.Masks.For(_window));                       // (B, T, nH·hD)
        return scope.MoveToOuter(o_proj.forward(y));
    }

    /// <summary>A per-head transform of the queries (B, T, nH, hD), or (B, nH, 1, hD) for one token, over the last dimension, before RoPE; none here (Qwen3 norms them).</summary>
    protected virtual Tensor QueryNorm(Tensor q) => q;

    /// <summary>A per-head transform of the keys (B, T, nKV, hD), or (B, nKV, 1, hD) for one token, over the last dimension, before RoPE; none here (Qwen3 norms them).</summary>
    protected virtual Tensor KeyNorm(Tensor k) => k;

    /// <summary>Llama and Mistral: this attention and the SwiGLU MLP under HF's Llama names.</summary>
    internal static DecoderParts LlamaDecoder(string architecture) =>
        new(architecture, DecoderNames.Llama, (config, build, layer) => new LlamaAttention(config, build, layer), (config, build) => new SwiGluMlp(config, build));
}
