using FineTune.Engine.Models;

namespace FineTune.Tests.Models;

public class ModelConfigTests
{
    [Fact]
    public void Reads_the_hub_style_with_rope_theta_rope_scaling_and_torch_dtype()
    {
        var config = ModelConfig.Parse("""
            {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_hidden_layers": 32,
             "num_attention_heads": 32, "num_key_value_heads": 8, "rms_norm_eps": 1e-05, "vocab_size": 128256,
             "max_position_embeddings": 131072, "tie_word_embeddings": false, "attention_bias": false,
             "bos_token_id": 128000, "eos_token_id": [128001, 128008, 128009], "hidden_act": "silu",
             "rope_theta": 500000.0, "torch_dtype": "bfloat16",
             "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                              "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
            """);
        Assert.Equal("llama", config.ModelType);
        Assert.Equal(128, config.HeadDim);
        Assert.Equal(8, config.NumKeyValueHeads);
        Assert.Equal(1e-5, config.RmsNormEps);
        Assert.Equal(new RopeSettings(500000.0, "llama3", 8.0, 1.0, 4.0, 8192), config.Rope);
        Assert.Equal([128001, 128008, 128009], config.EosTokenIds);
        Assert.Equal(128000, config.BosTokenId);
        Assert.Equal("bfloat16", config.StoredDType);
        Assert.False(config.TieWordEmbeddings);
    }

    [Fact]
    public void Reads_the_transformers_5_style_with_rope_parameters_and_dtype()
    {
        var config = ModelConfig.Parse("""
            {"model_type": "qwen3", "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
             "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "rms_norm_eps": 1e-06,
             "vocab_size": 151936, "tie_word_embeddings": true, "eos_token_id": 151645, "dtype": "bfloat16",
             "sliding_window": null, "use_sliding_window": false,
             "rope_parameters": {"rope_theta": 1000000, "rope_type": "default"}}
            """);
        Assert.Equal(128, config.HeadDim); // explicit, not 1024 / 16
        Assert.Equal(new RopeSettings(1000000.0), config.Rope);
        Assert.Equal("bfloat16", config.StoredDType);
        Assert.True(config.TieWordEmbeddings);
        Assert.Equal([151645], config.EosTokenIds);
        Assert.Null(config.SlidingWindow);
        Assert.False(config.IsSlidingLayer(0));
    }

    [Fact]
    public void Reads_qwen_v1_names_and_halves_its_intermediate_size()
    {
        var config = ModelConfig.Parse("""
            {"model_type": "qwen", "hidden_size": 4096, "num_attention_heads": 32, "num_hidden_layers": 32,
             "intermediate_size": 22016, "kv_channels": 128, "rotary_emb_base": 10000, "rotary_pct": 1.0,
             "layer_norm_epsilon": 1e-06, "vocab_size": 151936, "seq_length": 8192, "no_bias": true,
             "tie_word_embeddings": false}
            """);
        Assert.Equal(11008, config.IntermediateSize);
        Assert.Equal(128, config.HeadDim);
        Assert.Equal(32, config.NumKeyValueHeads);
        Assert.Equal(new RopeSettings(10000.0), config.Rope);
        Assert.Equal(8192, config.MaxPositionEmbeddings);
        Assert.False(config.MlpBias);
        Assert.True(config.AttentionBias);
    }

    [Fact]
    public void Mistral_sliding_window_applies_to_every_layer_and_qwen2_only_when_asked()
    {
        var mistral = ModelConfig.Parse("""
            {"model_type": "mistral", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "vocab_size": 10, "sliding_window": 4096}
            """);
        Assert.True(mistral.IsSlidingLayer(0) && mistral.IsSlidingLayer(1));
        var qwen2 = ModelConfig.Parse("""
            {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 3,
             "num_attention_heads": 4, "vocab_size": 10, "sliding_window": 32, "use_sliding_window": true,
             "max_window_layers": 2}
            """);
        Assert.Equal([false, false, true], qwen2.SlidingLayers);
        var off = ModelConfig.Parse("""
            {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "vocab_size": 10, "sliding_window": 32, "use_sliding_window": false}
            """);
        Assert.False(off.IsSlidingLayer(1));
    }

    [Fact]
    public void Unsupported_model_types_name_the_supported_ones()
    {
        var error = Assert.Throws<UnsupportedModelException>(() => ModelConfig.Parse("""{"model_type": "gpt2", "n_embd": 768}"""));
        Assert.Contains("gpt2", error.Message);
        foreach (string supported in new[] { "qwen", "qwen2", "qwen3", "llama", "mistral" })
            Assert.Contains(supported, error.Message);
    }

    [Fact]
    public void Unsupported_rope_types_and_missing_fields_are_clear_errors()
    {
        var rope = Assert.Throws<UnsupportedModelException>(() => ModelConfig.Parse("""
            {"model_type": "qwen2", "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
             "num_attention_heads": 4, "vocab_size": 10, "rope_scaling": {"type": "yarn", "factor": 4.0}}
            """));
        Assert.Contains("yarn", rope.Message);
        var missing = Assert.Throws<ModelFormatException>(() => ModelConfig.Parse("""{"model_type": "llama", "hidden_size": 64}"""));
        Assert.Contains("has no num_attention_heads", missing.Message);
        Assert.Throws<ModelFormatException>(() => ModelConfig.Parse("{not json"));
    }

    [Theory]
    [InlineData("qwen2", 2, true, 1000000.0)]
    [InlineData("qwen2-v5", 3, false, 1000000.0)]
    [InlineData("qwen3", 2, true, 1000000.0)]
    [InlineData("llama3", 2, false, 500000.0)]
    [InlineData("mistral", 2, false, 1000000.0)]
    [InlineData("qwen-v1", 2, false, 10000.0)]
    public void Reads_every_fixture_config(string fixture, int layers, bool tied, double theta)
    {
        var config = ModelConfig.Load(ModelFixtures.Folder(fixture));
        Assert.Equal(layers, config.NumHiddenLayers);
        Assert.Equal(tied, config.TieWordEmbeddings);
        Assert.Equal(theta, config.Rope.Theta);
        Assert.Equal(64, config.HiddenSize);
    }
}
