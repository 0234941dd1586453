using static TorchSharp.torch;

namespace FineTune.Engine.Models;

#pragma warning disable IDE1006 // fields are named like the checkpoint keys (HF modeling_qwen3.py)

// Qwen3 (HF modular_qwen3.py): Llama's decoder whose queries and keys get a per-head RMSNorm (q_norm, k_norm)
// before RoPE; head_dim is explicit and may differ from hidden/heads. Extra checkpoint keys: self_attn.{q,k}_norm.

/// <summary>Qwen3's attention: <see cref="LlamaAttention"/> with per-head RMSNorm on queries and keys.</summary>
public sealed class Qwen3Attention : LlamaAttention
{
    public readonly RmsNorm q_norm;
    public readonly RmsNorm k_norm;

    public Qwen3Attention(ModelConfig config, ModelBuild build, int layer)
        : base(nameof(Qwen3Attention), config, build, layer, qkvBias: config.AttentionBias, outputBias: config.AttentionBias)
    {
        q_norm = new RmsNorm(config.HeadDim, config.RmsNormEps);
        k_norm = new RmsNorm(config.HeadDim, config.RmsNormEps);
        // After the projections, as in the checkpoint (the base registered those before these fields were set).
        register_module(nameof(q_norm), q_norm);
        register_module(nameof(k_norm), k_norm);
    }

    protected override bool NormsHeads => true;

    protected override Tensor QueryNorm(Tensor q) => q_norm.forward(q); // (B, T, nH, hD)

    protected override Tensor KeyNorm(Tensor k) => k_norm.forward(k);   // (B, T, nKV, hD)

    /// <summary>Qwen3ForCausalLM (dense Qwen3 models).</summary>
    internal static readonly DecoderParts Qwen3Decoder =
        new("Qwen3ForCausalLM", DecoderNames.Llama, (config, build, layer) => new Qwen3Attention(config, build, layer), (config, build) => new SwiGluMlp(config, build));
}
