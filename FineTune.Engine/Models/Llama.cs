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
public class LlamaAttention : DecoderAttention, IStackedProjections
{
    public readonly LoraLinear q_proj;
    public readonly LoraLinear k_proj;
    public readonly LoraLinear v_proj;
    public readonly LoraLinear o_proj;
    private readonly int _layer, _heads, _kvHeads, _headDim;
    private readonly int? _window;
    private readonly StackedLinear _qkv;

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
        _qkv = new StackedLinear(q_proj, k_proj, v_proj);
    }

    public override Tensor forward(Tensor x, DecoderPass pass)
    {
        using var scope = NewDisposeScope();
        long[] shape = x.shape;
        var (b, t) = (shape[0], shape[1]);
        Tensor q, k, v;
        if (t == 1 && pass.Cache is not null && !NormsHeads && _qkv.Forward(x) is { } qkv)
        {
            // One new token (decode) with q, k, v from one matmul: RoPE and the cache store read them in place (one
            // kernel on CUDA). Decode is bound by the host's time per op.
            (q, k, v) = pass.Cache.RotateAndUpdate(_layer, qkv, _heads, _kvHeads, pass.Cos, pass.SignedSin); // q (B, nH, 1, hD); k, v (B, nKV, S, hD)
        }
        else
        {
            if (t == 1)
            {
                // One new token: (B, 1, n, hD) and (B, n, 1, hD) are the same memory, so one view makes the heads (the
                // per-head norms see the same rows).
                q = QueryNorm(q_proj.forward(x).view(b, _heads, 1, _headDim));                  // (B, nH, 1, hD)
                k = KeyNorm(k_proj.forward(x).view(b, _kvHeads, 1, _headDim));                   // (B, nKV, 1, hD)
                v = v_proj.forward(x).view(b, _kvHeads, 1, _headDim);                            // (B, nKV, 1, hD)
            }
            else
            {
                // One matmul for q, k and v: their NF4 weights dequantized together, or their dense ones stacked (LoraLinear.ForwardShared).
                var projected = LoraLinear.ForwardShared(x, _qkv, q_proj, k_proj, v_proj);   // (B, T, nH·hD), (B, T, nKV·hD) ×2
                q = QueryNorm(projected[0].view(b, t, _heads, _headDim)).transpose(1, 2);    // (B, nH, T, hD)
                k = KeyNorm(projected[1].view(b, t, _kvHeads, _headDim)).transpose(1, 2);    // (B, nKV, T, hD)
                v = projected[2].view(b, t, _kvHeads, _headDim).transpose(1, 2);             // (B, nKV, T, hD)
            }
            (q, k, v) = AttentionOps.RotateAndCache(q, k, v, pass, _layer);                       // RoPE; k, v: (B, nKV, S, hD)
        }
        var y = AttentionOps.Attend(q, k, v, pass.Masks.For(_window));                           // (B, T, nH·hD)
        return scope.MoveToOuter(o_proj.forward(y));
    }

    /// <summary>q_proj, k_proj and v_proj as one matmul for generation (ModelLoader stacks them after loading).</summary>
    public IEnumerable<StackedLinear> Stacks => [_qkv];

    protected override void Dispose(bool disposing)
    {
        if (disposing) _qkv.Dispose();
        base.Dispose(disposing);
    }

    /// <summary>True where <see cref="QueryNorm"/> and <see cref="KeyNorm"/> transform the heads (then decode takes q, k, v apart first).</summary>
    protected virtual bool NormsHeads => false;

    /// <summary>A per-head transform of the queries (B, T, nH, hD), or (B, nH, 1, hD) for one token, over the last dimension, before RoPE; none here (Qwen3 norms them).</summary>
    protected virtual Tensor QueryNorm(Tensor q) => q;

    /// <summary>A per-head transform of the keys (B, T, nKV, hD), or (B, nKV, 1, hD) for one token, over the last dimension, before RoPE; none here (Qwen3 norms them).</summary>
    protected virtual Tensor KeyNorm(Tensor k) => k;

    /// <summary>Llama and Mistral: this attention and the SwiGLU MLP under HF's Llama names.</summary>
    internal static DecoderParts LlamaDecoder(string architecture) =>
        new(architecture, DecoderNames.Llama, (config, build, layer) => new LlamaAttention(config, build, layer), (config, build) => new SwiGluMlp(config, build));
}
