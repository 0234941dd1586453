using System.Text.Json.Nodes;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Kernels;
using FineTune.Engine.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Bench;

/// <summary>
/// `saved-memory [--hidden 3584 --intermediate 18944 --heads 28 --kv-heads 4 --tokens 512] [--out F]` (CPU): what one
/// decoder layer of a Qwen2 shape (default the 7B's) keeps per token between forward and backward, as resident bytes
/// after a training forward with the output alive, for: the torch ops' graph, the fused RMSNorm and SiLU·up, the same
/// without LoRA dropout, and with LoRA on all seven projections. A random one-layer bf16 model is written to a temporary
/// folder (1,024-token vocabulary); the final norm counts with the layer. On the CPU LoRA dropout keeps a 16-bit mask (nn.Dropout) where CUDA keeps a bool one.
/// </summary>
internal static class SavedMemoryCommand
{
    public static int Run(string[] args, BackendInfo backend)
    {
        var o = new Options(args);
        int hidden = o.Int("hidden", 3584), inter = o.Int("intermediate", 18944), heads = o.Int("heads", 28), kv = o.Int("kv-heads", 4), tokens = o.Int("tokens", 512);
        if (backend.IsCuda) Console.WriteLine("saved-memory measures resident host memory: it runs the model on the CPU.");
        string folder = Directory.CreateTempSubdirectory("ft-saved-memory-").FullName;
        try
        {
            WriteModel(folder, hidden, inter, heads, kv);
            var result = new JsonObject { ["hidden"] = hidden, ["intermediate"] = inter, ["heads"] = heads, ["kv_heads"] = kv, ["tokens"] = tokens };
            string[] attention = ["q_proj", "k_proj", "v_proj", "o_proj"];
            string[] all = [.. attention, "gate_proj", "up_proj", "down_proj"];
            var variants = new (string Name, bool Plain, double Dropout, string[] Targets)[]
            {
                ("torch graph, LoRA q/k/v/o, dropout 0.05", true, 0.05, attention),
                ("fused, LoRA q/k/v/o, dropout 0.05", false, 0.05, attention),
                ("fused, LoRA q/k/v/o, no dropout", false, 0.0, attention),
                ("fused, LoRA on all 7, dropout 0.05", false, 0.05, all),
            };
            var rows = new JsonArray();
            foreach (var (name, plain, dropout, targets) in variants)
            {
                long kept = Kept(folder, tokens, plain, new LoraSettings(Rank: 16, Alpha: 32, Dropout: dropout, TargetModules: targets));
                double perToken = kept / (double)tokens;
                Console.WriteLine($"{name,-45} {kept / (1024.0 * 1024.0),8:F1} MiB kept, {perToken / 1024.0,8:F1} KiB a token and layer");
                rows.Add(new JsonObject { ["variant"] = name, ["kept_bytes"] = kept, ["bytes_per_token_layer"] = perToken });
            }
            result["variants"] = rows;
            Console.WriteLine(result.ToJsonString());
            if (o.Optional("out") is string path) File.WriteAllText(path, result.ToJsonString());
            return 0;
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    /// <summary>Resident bytes a training forward of the one-layer model keeps beyond its output.</summary>
    private static long Kept(string folder, int tokens, bool plain, LoraSettings settings)
    {
        using var lm = ModelLoader.Load(folder, new ModelLoadOptions { DType = ScalarType.BFloat16, Device = CPU });
        LoraInjector.Attach(lm.NamedLinears(), settings, seed: 1);
        lm.train();
        using var scope = NewDisposeScope();
        var ids = randint(0, 1024, [1, tokens], dtype: ScalarType.Int64);
        FusedOps.PlainAutograd = plain;
        try
        {
            GC.Collect();
            HostMemory.TrimNativeHeap();
            long before = HostMemory.ResidentBytes();
            var h = lm.HiddenStates(ids);                                            // (1, T, H)
            return HostMemory.ResidentBytes() - before - h.numel() * h.element_size();              // the graph goes with the scope
        }
        finally
        {
            FusedOps.PlainAutograd = false;
        }
    }

    private static void WriteModel(string folder, int hidden, int inter, int heads, int kv)
    {
        int vocab = 1024, headDim = hidden / heads;
        File.WriteAllText(Path.Combine(folder, "config.json"), $$"""
            {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu", "hidden_size": {{hidden}},
             "intermediate_size": {{inter}}, "num_hidden_layers": 1, "num_attention_heads": {{heads}}, "num_key_value_heads": {{kv}},
             "vocab_size": {{vocab}}, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "max_position_embeddings": 32768,
             "tie_word_embeddings": false, "torch_dtype": "bfloat16"}
            """);
        using var scope = NewDisposeScope();
        Tensor W(params long[] shape) => (randn(shape) * 0.02).to(ScalarType.BFloat16);
        string p = "model.layers.0.";
        var tensors = new Dictionary<string, Tensor>
        {
            ["model.embed_tokens.weight"] = W(vocab, hidden),
            [p + "input_layernorm.weight"] = ones(hidden, dtype: ScalarType.BFloat16),
            [p + "self_attn.q_proj.weight"] = W(heads * headDim, hidden),
            [p + "self_attn.q_proj.bias"] = W(heads * headDim),
            [p + "self_attn.k_proj.weight"] = W(kv * headDim, hidden),
            [p + "self_attn.k_proj.bias"] = W(kv * headDim),
            [p + "self_attn.v_proj.weight"] = W(kv * headDim, hidden),
            [p + "self_attn.v_proj.bias"] = W(kv * headDim),
            [p + "self_attn.o_proj.weight"] = W(hidden, heads * headDim),
            [p + "post_attention_layernorm.weight"] = ones(hidden, dtype: ScalarType.BFloat16),
            [p + "mlp.gate_proj.weight"] = W(inter, hidden),
            [p + "mlp.up_proj.weight"] = W(inter, hidden),
            [p + "mlp.down_proj.weight"] = W(hidden, inter),
            ["model.norm.weight"] = ones(hidden, dtype: ScalarType.BFloat16),
            ["lm_head.weight"] = W(vocab, hidden),
        };
        SafeTensors.Save(Path.Combine(folder, "model.safetensors"), tensors);
    }
}
