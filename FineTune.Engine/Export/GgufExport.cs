using System.Diagnostics;
using System.Runtime.InteropServices;
using FineTune.Engine.Adapters;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using static TorchSharp.torch;

namespace FineTune.Engine.Export;

/// <summary>What to write.</summary>
/// <param name="Type">f16, q8_0 or q4_0 for the 2-D weights (norms, biases and rope factors stay f32).</param>
/// <param name="AdapterFolder">A PEFT LoRA adapter folder to merge into the weights first, or null for the base model.</param>
/// <param name="Template">The prompt format the run trained with; written as tokenizer.chat_template (the model's own
/// chat template, or the tutorial/custom format as a Jinja template) and as the Modelfile's TEMPLATE.</param>
/// <param name="Name">general.name; default the model folder's name.</param>
public sealed record GgufExportOptions(
    GgufFileType Type = GgufFileType.F16,
    string? AdapterFolder = null,
    PromptTemplateSettings? Template = null,
    string? Name = null)
{
    public IProgress<GgufExportProgress>? Progress { get; init; }
    public CancellationToken CancellationToken { get; init; }
    public ILogger? Logger { get; init; }
}

/// <summary>Tensors written so far of all, and the one just written.</summary>
public sealed record GgufExportProgress(int TensorsWritten, int TensorCount, string Tensor);

/// <summary>The written file: its tensors and size, the architecture and pre-tokenizer chosen.</summary>
public sealed record GgufExportResult(string Path, string Architecture, string PreTokenizer, long Bytes, IReadOnlyList<GgufTensorInfo> Tensors, int MergedLayers);

/// <summary>
/// Writes a Hugging Face model folder (optionally with a LoRA adapter merged in) as one GGUF v3 file for llama.cpp
/// and Ollama, the way llama.cpp's convert_hf_to_gguf.py does for Qwen2, Qwen3, Llama and Mistral: the same
/// tensor names, architecture keys, tokenizer metadata, and for the "llama" architecture the q/k rows permuted
/// from HF's rotate-half order to the interleaved pairs llama.cpp's rope uses; Llama 3 rope scaling as a
/// rope_freqs tensor. Tensor by tensor: each checkpoint tensor is read, merged with its LoRA update (W + B·A·scaling,
/// in fp32), converted and written before the next is read, so memory holds one tensor, never the model.
/// </summary>
public static class GgufExport
{
    /// <summary>model_type → llama.cpp architecture, and whether q/k need the rotate-half → interleaved permutation.</summary>
    public static readonly IReadOnlyDictionary<string, (string Architecture, bool PermuteQk)> Architectures =
        new Dictionary<string, (string, bool)>(StringComparer.Ordinal)
        {
            ["qwen2"] = ("qwen2", false),
            ["qwen3"] = ("qwen3", false),
            ["llama"] = ("llama", true),
            ["mistral"] = ("llama", true), // convert_hf_to_gguf.py registers MistralForCausalLM as LlamaModel
        };

    private const long ElementsPerChunk = 1 << 22; // 16 MiB of fp32 per chunk

    public static GgufExportResult Export(string modelFolder, string outputPath, GgufExportOptions? options = null)
    {
        options ??= new GgufExportOptions();
        var logger = options.Logger ?? NullLogger.Instance;
        var watch = Stopwatch.StartNew();
        var config = ModelConfig.Load(modelFolder);
        if (!Architectures.TryGetValue(config.ModelType, out var arch))
            throw new GgufExportException($"GGUF export supports model types {string.Join(", ", Architectures.Keys)}; this model is '{config.ModelType}'.");
        var tokenizer = TokenizerLoader.Load(modelFolder);
        var vocabulary = GgufVocabulary.FromTokenizerJson(Path.Combine(modelFolder, "tokenizer.json"), config.VocabSize, tokenizer.SpecialTokenIds);

        using var checkpoint = SafeTensorsCheckpoint.Open(modelFolder);
        using var adapter = options.AdapterFolder is null ? null : LoraUpdates.Open(options.AdapterFolder);
        var plan = Plan(config, checkpoint, arch.PermuteQk, options.Type);
        adapter?.CheckTargets(plan.Where(p => p.Source is not null).Select(p => p.Source!).ToHashSet(StringComparer.Ordinal), config.TieWordEmbeddings);

        string directory = Path.GetDirectoryName(Path.GetFullPath(outputPath))!;
        Directory.CreateDirectory(directory);
        string partial = outputPath + ".partial";
        IReadOnlyList<GgufTensorInfo> infos;
        using (var stream = new FileStream(partial, FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20))
        using (var writer = new GgufWriter(stream))
        {
            WriteMetadata(writer, config, arch.Architecture, options, tokenizer, vocabulary, modelFolder);
            foreach (var p in plan) writer.AddTensor(p.Name, p.Shape, p.Type);
            writer.WriteHeader();
            for (int i = 0; i < plan.Count; i++)
            {
                options.CancellationToken.ThrowIfCancellationRequested();
                WriteTensor(writer, plan[i], checkpoint, adapter, config);
                options.Progress?.Report(new GgufExportProgress(i + 1, plan.Count, plan[i].Name));
            }
            writer.Finish();
            infos = writer.Tensors;
        }
        File.Move(partial, outputPath, overwrite: true);
        long bytes = new FileInfo(outputPath).Length;
        logger.LogInformation("Wrote {Path}: {Architecture}, {Type}, {Tensors} tensors, {MiB:0.0} MiB, {Merged} LoRA layers merged, in {Seconds:0.0} s",
            outputPath, arch.Architecture, options.Type, plan.Count, bytes / 1048576.0, adapter?.Count ?? 0, watch.Elapsed.TotalSeconds);
        return new GgufExportResult(outputPath, arch.Architecture, vocabulary.PreTokenizer, bytes, infos, adapter?.Count ?? 0);
    }

    /// <summary>
    /// A GGUF with the metadata and tokenizer only, no tensors (convert_hf_to_gguf.py --vocab-only): what llama.cpp's
    /// tokenizer tools and vocab-only loading read. Needs config.json and the tokenizer files, no weights.
    /// </summary>
    public static void ExportVocabulary(string modelFolder, string outputPath, GgufExportOptions? options = null)
    {
        options ??= new GgufExportOptions();
        var config = ModelConfig.Load(modelFolder);
        if (!Architectures.TryGetValue(config.ModelType, out var arch))
            throw new GgufExportException($"GGUF export supports model types {string.Join(", ", Architectures.Keys)}; this model is '{config.ModelType}'.");
        var tokenizer = TokenizerLoader.Load(modelFolder);
        var vocabulary = GgufVocabulary.FromTokenizerJson(Path.Combine(modelFolder, "tokenizer.json"), config.VocabSize, tokenizer.SpecialTokenIds);
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(outputPath))!);
        using var stream = new FileStream(outputPath + ".partial", FileMode.Create, FileAccess.Write, FileShare.None, 1 << 20);
        using (var writer = new GgufWriter(stream))
        {
            WriteMetadata(writer, config, arch.Architecture, options, tokenizer, vocabulary, modelFolder);
            writer.WriteHeader();
            writer.Finish();
        }
        stream.Close();
        File.Move(outputPath + ".partial", outputPath, overwrite: true);
    }

    /// <summary>One GGUF tensor: its checkpoint source (null for generated ones), shape, type and treatment.</summary>
    private sealed record PlannedTensor(string Name, string? Source, long[] Shape, GgmlType Type, int PermuteHeads, float[]? Generated = null);

    private static List<PlannedTensor> Plan(ModelConfig config, SafeTensorsCheckpoint checkpoint, bool permuteQk, GgufFileType fileType)
    {
        var plan = new List<PlannedTensor>();
        if (config.Rope.Type == "llama3")
        {
            float[] factors = Llama3RopeFactors(config);
            plan.Add(new PlannedTensor("rope_freqs.weight", null, [factors.Length], GgmlType.F32, 0, factors));
        }
        var unknown = new List<string>();
        foreach (var entry in checkpoint.InFileOrder)
        {
            string key = entry.Name;
            if (key.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal)) continue;
            if (key == "lm_head.weight" && config.TieWordEmbeddings) continue; // llama.cpp uses token_embd when output is absent
            string? name = TensorName(key);
            if (name is null)
            {
                unknown.Add(key);
                continue;
            }
            int permute = !permuteQk ? 0
                : name.Contains(".attn_q.", StringComparison.Ordinal) ? config.NumAttentionHeads
                : name.Contains(".attn_k.", StringComparison.Ordinal) ? config.NumKeyValueHeads
                : 0;
            bool tiedOutput = name == "token_embd.weight" && config.TieWordEmbeddings;
            plan.Add(new PlannedTensor(name, key, entry.Shape, TypeFor(name, entry.Shape, fileType, tiedOutput), permute));
        }
        if (unknown.Count > 0)
            throw new GgufExportException($"The checkpoint has tensors with no GGUF name for a {config.ModelType} model: {string.Join(", ", unknown.Take(5))}{(unknown.Count > 5 ? $" and {unknown.Count - 5} more" : "")}.");
        return plan;
    }

    /// <summary>
    /// HF checkpoint key → llama.cpp tensor name (gguf-py tensor_mapping.py), or null when it has none.
    /// </summary>
    public static string? TensorName(string key)
    {
        switch (key)
        {
            case "model.embed_tokens.weight": return "token_embd.weight";
            case "model.norm.weight": return "output_norm.weight";
            case "lm_head.weight": return "output.weight";
        }
        const string prefix = "model.layers.";
        if (!key.StartsWith(prefix, StringComparison.Ordinal)) return null;
        int dot = key.IndexOf('.', prefix.Length);
        if (dot < 0 || !int.TryParse(key.AsSpan(prefix.Length, dot - prefix.Length), out int layer)) return null;
        string rest = key[(dot + 1)..];
        int last = rest.LastIndexOf('.');
        if (last < 0) return null;
        string module = rest[..last], suffix = rest[(last + 1)..];
        string? name = module switch
        {
            "input_layernorm" => "attn_norm",
            "post_attention_layernorm" => "ffn_norm",
            "self_attn.q_proj" => "attn_q",
            "self_attn.k_proj" => "attn_k",
            "self_attn.v_proj" => "attn_v",
            "self_attn.o_proj" => "attn_output",
            "self_attn.q_norm" => "attn_q_norm",
            "self_attn.k_norm" => "attn_k_norm",
            "mlp.gate_proj" => "ffn_gate",
            "mlp.up_proj" => "ffn_up",
            "mlp.down_proj" => "ffn_down",
            _ => null,
        };
        return name is null || suffix is not ("weight" or "bias") ? null : $"blk.{layer}.{name}.{suffix}";
    }

    /// <summary>
    /// 1-D tensors stay f32 (as convert_hf_to_gguf.py keeps them); matrices take the file's type where their rows
    /// are whole blocks, else f16. With q4_0 the output matrix (token_embd when tied) is q8_0: llama.cpp's quantizer
    /// also keeps it at a higher precision (q6_K there; K-quants are not written here).
    /// </summary>
    private static GgmlType TypeFor(string name, long[] shape, GgufFileType fileType, bool tiedOutput)
    {
        if (shape.Length < 2) return GgmlType.F32;
        long row = shape[^1];
        GgmlType wanted = fileType switch
        {
            GgufFileType.F16 => GgmlType.F16,
            GgufFileType.Q8_0 => GgmlType.Q8_0,
            GgufFileType.Q4_0 => name == "output.weight" || tiedOutput ? GgmlType.Q8_0 : GgmlType.Q4_0,
            _ => throw new ArgumentOutOfRangeException(nameof(fileType), fileType, "Unknown GGUF file type."),
        };
        return GgmlTypes.Fits(wanted, row) ? wanted : GgmlType.F16;
    }

    /// <summary>
    /// Llama 3 rope scaling as llama.cpp takes it: per frequency, the factor its angle is divided by
    /// (1 for high frequencies, factor for low ones, smoothly between) — convert_hf_to_gguf.py's rope_freqs.
    /// </summary>
    public static float[] Llama3RopeFactors(ModelConfig config)
    {
        var rope = config.Rope;
        int dim = config.HeadDim;
        double oldContext = rope.OriginalMaxPositionEmbeddings ?? 8192;
        double lowWavelength = oldContext / rope.LowFreqFactor, highWavelength = oldContext / rope.HighFreqFactor;
        var factors = new float[dim / 2];
        for (int i = 0; i < dim / 2; i++)
        {
            double freq = 1.0 / Math.Pow(rope.Theta, 2.0 * i / dim);
            double wavelength = 2 * Math.PI / freq;
            if (wavelength < highWavelength) factors[i] = 1;
            else if (wavelength > lowWavelength) factors[i] = (float)rope.Factor;
            else
            {
                double smooth = (oldContext / wavelength - rope.LowFreqFactor) / (rope.HighFreqFactor - rope.LowFreqFactor);
                factors[i] = (float)(1 / ((1 - smooth) / rope.Factor + smooth));
            }
        }
        return factors;
    }

    private static void WriteMetadata(GgufWriter w, ModelConfig c, string arch, GgufExportOptions options, ITextTokenizer tokenizer, GgufVocabulary vocabulary, string modelFolder)
    {
        w.AddString("general.architecture", arch);
        w.AddString("general.type", "model");
        w.AddString("general.name", options.Name ?? Path.GetFileName(Path.TrimEndingDirectorySeparator(Path.GetFullPath(modelFolder))));
        w.AddUInt32("general.file_type", (uint)options.Type);
        w.AddUInt32("general.quantization_version", 2); // GGML_QUANT_VERSION

        w.AddUInt32($"{arch}.vocab_size", (uint)c.VocabSize);
        w.AddUInt32($"{arch}.context_length", (uint)c.MaxPositionEmbeddings);
        w.AddUInt32($"{arch}.embedding_length", (uint)c.HiddenSize);
        w.AddUInt32($"{arch}.block_count", (uint)c.NumHiddenLayers);
        w.AddUInt32($"{arch}.feed_forward_length", (uint)c.IntermediateSize);
        w.AddUInt32($"{arch}.attention.head_count", (uint)c.NumAttentionHeads);
        w.AddUInt32($"{arch}.attention.head_count_kv", (uint)c.NumKeyValueHeads);
        w.AddUInt32($"{arch}.attention.key_length", (uint)c.HeadDim);
        w.AddUInt32($"{arch}.attention.value_length", (uint)c.HeadDim);
        w.AddFloat32($"{arch}.attention.layer_norm_rms_epsilon", (float)c.RmsNormEps);
        w.AddUInt32($"{arch}.rope.dimension_count", (uint)c.HeadDim);
        w.AddFloat32($"{arch}.rope.freq_base", (float)c.Rope.Theta);
        if (c.Rope.Type == "linear")
        {
            w.AddString($"{arch}.rope.scaling.type", "linear");
            w.AddFloat32($"{arch}.rope.scaling.factor", (float)c.Rope.Factor);
        }

        w.AddString("tokenizer.ggml.model", vocabulary.Model);
        w.AddString("tokenizer.ggml.pre", vocabulary.PreTokenizer);
        w.AddStringArray("tokenizer.ggml.tokens", vocabulary.Tokens);
        w.AddInt32Array("tokenizer.ggml.token_type", vocabulary.Types.Select(t => (int)t).ToArray());
        w.AddStringArray("tokenizer.ggml.merges", vocabulary.Merges);
        if (tokenizer.BosTokenId is int bos) w.AddUInt32("tokenizer.ggml.bos_token_id", (uint)bos);
        if (tokenizer.EosTokenId is int eos) w.AddUInt32("tokenizer.ggml.eos_token_id", (uint)eos);
        if (tokenizer.PadTokenId is int pad) w.AddUInt32("tokenizer.ggml.padding_token_id", (uint)pad);
        var frame = TokenizerFrame(tokenizer);
        w.AddBool("tokenizer.ggml.add_bos_token", frame.AddsBos);
        w.AddBool("tokenizer.ggml.add_eos_token", frame.AddsEos);
        string? template = RunChatTemplate(options.Template, tokenizer);
        if (template is not null) w.AddString("tokenizer.chat_template", template);
    }

    /// <summary>Whether the tokenizer puts BOS before / EOS after a text (HF tokenizer(text) with special tokens).</summary>
    private static (bool AddsBos, bool AddsEos) TokenizerFrame(ITextTokenizer tokenizer)
    {
        var with = tokenizer.Encode("a", addSpecialTokens: true);
        var without = tokenizer.Encode("a", addSpecialTokens: false);
        bool bos = with.Count > without.Count && tokenizer.BosTokenId is int b && with[0] == b;
        bool eos = with.Count > without.Count && tokenizer.EosTokenId is int e && with[^1] == e;
        return (bos, eos);
    }

    /// <summary>The template llama.cpp should apply: the model's chat template, or the tutorial/custom format as Jinja.</summary>
    public static string? RunChatTemplate(PromptTemplateSettings? settings, ITextTokenizer tokenizer)
    {
        settings ??= new PromptTemplateSettings(PromptStyle.ModelChatTemplate);
        if (settings.Style == PromptStyle.ModelChatTemplate) return ChatTemplate.ForTokenizer(tokenizer)?.Source;
        string text = settings.Style == PromptStyle.Tutorial ? PromptTemplate.TutorialTemplate : settings.CustomTemplate!;
        PromptTemplate.Validate(text);
        int at = text.IndexOf("{output}", StringComparison.Ordinal);
        string before = text[..at].Replace("{input}", "", StringComparison.Ordinal).Replace("{system}", settings.SystemPrompt ?? "", StringComparison.Ordinal);
        string after = text[(at + "{output}".Length)..].Replace("{input}", "", StringComparison.Ordinal).Replace("{system}", settings.SystemPrompt ?? "", StringComparison.Ordinal);
        int instruction = before.IndexOf("{instruction}", StringComparison.Ordinal);
        string userBefore = before[..instruction], userAfter = before[(instruction + "{instruction}".Length)..].Replace("{instruction}", "", StringComparison.Ordinal);
        return "{%- for message in messages -%}"
               + "{%- if message['role'] == 'user' -%}" + Literal(userBefore) + "{{ message['content'] }}" + Literal(userAfter)
               + "{%- elif message['role'] == 'assistant' -%}{{ message['content'] }}" + Literal(after) + "{{ eos_token }}"
               + "{%- endif -%}{%- endfor -%}";

        static string Literal(string s) => s.Length == 0 ? "" :
            "{{ '" + s.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("'", "\\'", StringComparison.Ordinal)
                      .Replace("\n", "\\n", StringComparison.Ordinal).Replace("\r", "\\r", StringComparison.Ordinal) + "' }}";
    }

    private static void WriteTensor(GgufWriter writer, PlannedTensor p, SafeTensorsCheckpoint checkpoint, LoraUpdates? adapter, ModelConfig config)
    {
        if (p.Generated is not null)
        {
            writer.WriteTensorData(MemoryMarshal.AsBytes(p.Generated.AsSpan()));
            writer.EndTensor();
            return;
        }
        using var scope = NewDisposeScope();
        var tensor = checkpoint.Read(p.Source!);
        var delta = adapter?.DeltaFor(p.Source!);
        if (delta is not null)
        {
            tensor = tensor.to(ScalarType.Float32) + delta;
            if (!isfinite(tensor).all().item<bool>())
                throw new ArithmeticException($"Merging the LoRA adapter into {p.Source} gives NaN or infinite weights; the adapter is broken.");
        }
        if (p.PermuteHeads > 0) tensor = PermuteRotaryHalves(tensor, p.PermuteHeads);
        WriteRows(writer, tensor, p.Type);
        writer.EndTensor();
    }

    /// <summary>
    /// convert_hf_to_gguf.py LlamaModel.permute: within each head, HF's rotate-half layout (first half, second half)
    /// becomes interleaved pairs (x0, x_{d/2}, x1, ...), the layout llama.cpp's "llama" rope rotates.
    /// </summary>
    public static Tensor PermuteRotaryHalves(Tensor weight, int heads)
    {
        long rows = weight.shape[0];
        long[] shape = weight.shape;
        long[] split = [heads, 2, rows / heads / 2, .. shape.Skip(1)];
        return weight.reshape(split).transpose(1, 2).reshape(shape).contiguous();
    }

    /// <summary>Writes a tensor's rows in the given type, a chunk of rows at a time (fp32 copies of one chunk only).</summary>
    private static void WriteRows(GgufWriter writer, Tensor tensor, GgmlType type)
    {
        long rowLength = tensor.dim() == 0 ? 1 : tensor.shape[^1];
        using var rows = tensor.reshape(-1, rowLength);
        long count = rows.shape[0];
        long chunkRows = Math.Max(1, Math.Min(count, ElementsPerChunk / Math.Max(1, rowLength)));
        byte[] buffer = new byte[GgmlTypes.RowBytes(type, rowLength) * chunkRows];
        for (long start = 0; start < count; start += chunkRows)
        {
            long n = Math.Min(chunkRows, count - start);
            using var scope = NewDisposeScope();
            var chunk = rows.narrow(0, start, n).to(ScalarType.Float32).contiguous();
            ReadOnlySpan<float> values = MemoryMarshal.Cast<byte, float>(chunk.bytes);
            int length = (int)(GgmlTypes.RowBytes(type, rowLength) * n);
            GgmlQuantization.Quantize(type, values, buffer.AsSpan(0, length));
            writer.WriteTensorData(buffer.AsSpan(0, length));
        }
    }
}
