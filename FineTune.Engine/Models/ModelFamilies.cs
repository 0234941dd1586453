namespace FineTune.Engine.Models;

/// <summary>Which config.json dialect a family writes.</summary>
public enum ConfigStyle
{
    /// <summary>HF's Llama-style names (hidden_size, num_key_value_heads, rope_theta / rope_parameters, ...).</summary>
    Llama,
    /// <summary>Qwen (v1)'s own names (kv_channels, rotary_emb_base, layer_norm_epsilon, ...).</summary>
    QwenV1,
}

/// <summary>
/// What a config.json model_type means to FineTune: how its config reads, which decoder parts build it, its linear
/// layers (the valid LoRA targets) and the targets used when none are chosen, and the name people know it by.
/// Adding a family = its file (attention/MLP), one entry in <see cref="ModelFamilies.All"/>, one test fixture.
/// </summary>
/// <param name="ModelType">config.json's model_type.</param>
/// <param name="DisplayName">How people name the family ("Qwen2 / Qwen2.5").</param>
/// <param name="Config">The config.json dialect.</param>
/// <param name="Decoder">The family's attention and MLP for the shared decoder, and its checkpoint names.</param>
/// <param name="LinearNames">The leaf names of its linear layers, in layer order, lm_head last (what LoRA can target).</param>
/// <param name="DefaultLoraTargets">The tutorial's choice for this family: the attention projections.</param>
public sealed record ModelFamily(
    string ModelType, string DisplayName, ConfigStyle Config, DecoderParts Decoder,
    IReadOnlyList<string> LinearNames, IReadOnlyList<string> DefaultLoraTargets)
{
    /// <summary>The module tree for a config of this family, weights on the meta device until loaded.</summary>
    public CausalLM Create(ModelConfig config, ModelBuild build) => new DecoderForCausalLM(config, build, Decoder);
}

/// <summary>The one registry of model families: config parsing, the loader and the web's presets read it.</summary>
public static class ModelFamilies
{
    private static readonly string[] LlamaLinears = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "lm_head"];
    private static readonly string[] AttentionProjections = ["q_proj", "k_proj", "v_proj", "o_proj"];

    public static readonly IReadOnlyList<ModelFamily> All =
    [
        new("qwen", "Qwen (v1)", ConfigStyle.QwenV1, QWen.Parts, ["c_attn", "attn.c_proj", "w1", "w2", "mlp.c_proj", "lm_head"], ["c_attn", "attn.c_proj"]),
        new("qwen2", "Qwen2 / Qwen2.5", ConfigStyle.Llama, Qwen2Attention.Qwen2Decoder, LlamaLinears, AttentionProjections),
        new("qwen3", "Qwen3", ConfigStyle.Llama, Qwen3Attention.Qwen3Decoder, LlamaLinears, AttentionProjections),
        new("llama", "Llama", ConfigStyle.Llama, LlamaAttention.LlamaDecoder("LlamaForCausalLM"), LlamaLinears, AttentionProjections),
        new("mistral", "Mistral", ConfigStyle.Llama, LlamaAttention.LlamaDecoder("MistralForCausalLM"), LlamaLinears, AttentionProjections),
    ];

    /// <summary>The model_type values FineTune runs.</summary>
    public static IReadOnlyList<string> SupportedModelTypes { get; } = [.. All.Select(f => f.ModelType)];

    public static ModelFamily? Find(string modelType) => All.FirstOrDefault(f => f.ModelType == modelType);

    /// <summary>The family of a model_type, or an <see cref="UnsupportedModelException"/> naming the supported ones.</summary>
    public static ModelFamily Get(string modelType, string source = "config.json") =>
        Find(modelType) ?? throw new UnsupportedModelException(
            $"model_type '{modelType}' ({source}) is not supported. Supported model types: {string.Join(", ", SupportedModelTypes)}.");
}
