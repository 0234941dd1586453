using FineTune.Engine.Adapters;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Models;

#pragma warning disable IDE1006 // fields are named like the checkpoint keys (Qwen's modeling_qwen.py, trust_remote_code)

// Qwen (v1: Qwen-1.8B/7B/14B, -Chat): multi-head attention from one fused c_attn (with bias), RoPE with
// base rotary_emb_base applied in fp32, MLP c_proj(w1(x) * silu(w2(x))) (the shared SwiGluMlp under these names), RMSNorm. Checkpoint keys:
// transformer.wte, transformer.h.N.{ln_1, attn.c_attn, attn.c_proj, ln_2, mlp.w1, mlp.w2, mlp.c_proj},
// transformer.ln_f, lm_head. The block, model and LM head are the shared decoder (Decoder.cs) under these names. Within seq_length its dynamic NTK and logn scaling are inactive, so they are not
// implemented: prompts + answers longer than seq_length are refused by the generator's length check.

public sealed class QWenAttention : DecoderAttention
{
    public readonly LoraLinear c_attn;
    public readonly LoraLinear c_proj;
    private readonly int _layer, _heads, _headDim;

    public QWenAttention(ModelConfig config, ModelBuild build, int layer) : base(nameof(QWenAttention))
    {
        (_layer, _heads, _headDim) = (layer, config.NumAttentionHeads, config.HeadDim);
        c_attn = build.Linear(config.HiddenSize, 3 * _heads * _headDim, hasBias: true);
        c_proj = build.Linear(_heads * _headDim, config.HiddenSize, config.MlpBias); // bias = not no_bias
        RegisterComponents();
    }

    public override Tensor forward(Tensor x, DecoderPass pass)
    {
        using var scope = NewDisposeScope();
        var (b, t) = (x.shape[0], x.shape[1]);
        var qkv = c_attn.forward(x).view(b, t, 3, _heads, _headDim);  // (B, T, 3, nH, hD)
        var q = Rotate(qkv.select(2, 0).transpose(1, 2), pass);        // (B, nH, T, hD)
        var k = Rotate(qkv.select(2, 1).transpose(1, 2), pass);        // (B, nH, T, hD)
        var v = qkv.select(2, 2).transpose(1, 2);                      // (B, nH, T, hD)
        if (pass.Cache is not null) (k, v) = pass.Cache.Update(_layer, k, v); // (B, nH, S, hD)
        var y = AttentionOps.Attend(q, k, v, pass.Masks.For(null));    // (B, T, nH·hD)
        return scope.MoveToOuter(c_proj.forward(y));
    }

    /// <summary>Qwen applies RoPE in fp32 and casts back (apply_rotary_pos_emb: t.float() ... type_as(t)).</summary>
    private static Tensor Rotate(Tensor x, DecoderPass pass) =>
        AttentionOps.ApplyRotary(x.to(ScalarType.Float32), pass.Cos, pass.SignedSin).to(x.dtype);
}

/// <summary>The names of Qwen's modeling_qwen.py for the shared decoder: transformer.wte, transformer.h.N.{ln_1, attn, ln_2, mlp}, transformer.ln_f.</summary>
internal static class QWen
{
    public static readonly DecoderNames Names = new("transformer", "wte", "h", "ln_f", "ln_1", "attn", "ln_2", "mlp");

    /// <summary>QWenLMHeadModel (Qwen v1 checkpoints, model_type "qwen"): RoPE tables in fp32, as Qwen computes them.</summary>
    public static readonly DecoderParts Parts =
        new("QWenLMHeadModel", Names, (config, build, layer) => new QWenAttention(config, build, layer), (config, build) => new SwiGluMlp(config, build, SwiGluNames.QWen), RopeDType: ScalarType.Float32);
}
