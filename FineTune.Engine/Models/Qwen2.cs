namespace FineTune.Engine.Models;

// Qwen2 / Qwen2.5 (HF modular_qwen2.py): Llama's decoder with bias on q/k/v (not o), whatever attention_bias says;
// sliding window only where config.json asks (use_sliding_window / layer_types). Same checkpoint keys as Llama.

/// <summary>Qwen2's attention: <see cref="LlamaAttention"/> with q/k/v bias and no o bias.</summary>
public sealed class Qwen2Attention(ModelConfig config, ModelBuild build, int layer)
    : LlamaAttention(nameof(Qwen2Attention), config, build, layer, qkvBias: true, outputBias: false)
{
    /// <summary>Qwen2ForCausalLM (Qwen2, Qwen2.5 and their instruct/coder variants).</summary>
    internal static readonly DecoderParts Qwen2Decoder =
        new("Qwen2ForCausalLM", DecoderNames.Llama, (config, build, layer) => new Qwen2Attention(config, build, layer), (config, build) => new SwiGluMlp(config, build));
}
