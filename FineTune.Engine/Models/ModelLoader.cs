using System.Diagnostics;
using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FineTune.Engine.Models;

/// <summary>How to load a model.</summary>
public sealed record ModelLoadOptions
{
    /// <summary>Where the weights go; default the compute backend's device.</summary>
    public Device? Device { get; init; }

    /// <summary>
    /// The weights' dtype: Float32, BFloat16 or Float16. Default: Float32 on the CPU; on CUDA BFloat16,
    /// or Float16 where the GPU lacks bf16.
    /// </summary>
    public ScalarType? DType { get; init; }

    /// <summary>Called for each linear (checkpoint key prefix, layer) before its weight is loaded, e.g. to prepare quantization.</summary>
    public Action<string, LoraLinear>? BeforeLoadLinear { get; init; }

    /// <summary>
    /// Optional replacement for the dense copy of a linear's weight: gets the key prefix, the layer and the
    /// checkpoint weight (on the target device, in the target dtype; the loader disposes it afterwards) and
    /// returns true when it took the weight itself (e.g. quantized it to NF4). Never called for a tied lm_head.
    /// </summary>
    public Func<string, LoraLinear, Tensor, bool>? LoadLinearWeight { get; init; }

    /// <summary>Reported after each tensor: bytes of the checkpoint read so far and in all.</summary>
    public IProgress<ModelLoadProgress>? Progress { get; init; }

    /// <summary>Stops loading between tensors (the partly built model is released).</summary>
    public CancellationToken CancellationToken { get; init; }

    public ILogger? Logger { get; init; }

    /// <summary>The linear layers become NF4 as they load (<see cref="Base"/> sets it with the quantizing hook): the memory check counts them at 4 bits.</summary>
    public bool FourBit { get; init; }

    /// <summary>With <see cref="FourBit"/>: block constants double-quantized (the memory check counts about 8 bits per 64 weights).</summary>
    public bool DoubleQuantization { get; init; } = true;

    /// <summary>What the device has, for the memory check before loading; default <see cref="ModelMemoryCheck.Available"/>, null when unknown.</summary>
    public Func<Device, AvailableMemory?>? AvailableMemory { get; init; }

    /// <summary>
    /// The options every caller loads a base model with: <paramref name="dtype"/> compute, and with
    /// <paramref name="fourBit"/> every linear but lm_head quantized to NF4 as it is read (bitsandbytes' load_in_4bit),
    /// its block scales double-quantized unless <paramref name="doubleQuantization"/> is false.
    /// </summary>
    public static ModelLoadOptions Base(ScalarType dtype, bool fourBit, bool doubleQuantization = true, Device? device = null, ILogger? logger = null) => new()
    {
        Device = device,
        DType = dtype,
        Logger = logger,
        FourBit = fourBit,
        DoubleQuantization = doubleQuantization,
        LoadLinearWeight = fourBit ? Nf4.QuantizeOnLoad(dtype, doubleQuantization) : null,
    };
}

/// <summary>Loading progress: <paramref name="BytesLoaded"/> of <paramref name="TotalBytes"/>, the last tensor read.</summary>
public sealed record ModelLoadProgress(long BytesLoaded, long TotalBytes, string Tensor)
{
    public double Fraction => TotalBytes == 0 ? 1 : (double)BytesLoaded / TotalBytes;
}

/// <summary>
/// Loads a Hugging Face model folder (config.json + safetensors) into the matching <see cref="CausalLM"/>.
/// The modules are built on the meta device (no memory); each checkpoint tensor is then read, converted to
/// the target device and dtype, taken by its module, and released before the next one is read.
/// </summary>
public static class ModelLoader
{
    public static readonly IReadOnlyList<ScalarType> SupportedDTypes = [ScalarType.Float32, ScalarType.BFloat16, ScalarType.Float16];

    public static CausalLM Load(string folder, ModelLoadOptions? options = null)
    {
        options ??= new ModelLoadOptions();
        var logger = options.Logger ?? NullLogger.Instance;
        if (!Directory.Exists(folder))
            throw new DirectoryNotFoundException($"The model folder '{folder}' does not exist.");
        var config = ModelConfig.Load(folder);
        var backend = ComputeBackend.Current;
        backend.EnsureCanCompute();
        var device = options.Device ?? backend.Device;
        var dtype = options.DType ?? DefaultDType(device, backend);
        if (!SupportedDTypes.Contains(dtype))
            throw new ArgumentException($"Models load as {string.Join(", ", SupportedDTypes)}; {dtype} is not one of them.", nameof(options));

        var watch = Stopwatch.StartNew();
        using var checkpoint = SafeTensorsCheckpoint.Open(folder);
        CheckConfigAgainstWeights(config, checkpoint, folder);
        ModelMemoryCheck.Ensure(folder, ModelFacts.Of(folder), checkpoint, device, dtype, options);
        var model = Create(config, new ModelBuild(device, dtype));
        try
        {
            // Dense weights load straight into their stacked rows (no second copy at load); a 4-bit load quantizes
            // each weight as it arrives and stacks nothing.
            if (options.LoadLinearWeight is null) model.StackProjections();
            Fill(model, checkpoint, options);
            model.StackProjections();
            model.eval();
        }
        catch
        {
            model.Dispose();
            HostMemory.TrimNativeHeap(); // the weights read so far go back to the system, not only to the C allocator
            throw;
        }
        logger.LogInformation("Loaded {ModelType} from {Folder} ({Layers} layers, {DType} on {Device}) in {Seconds:0.0} s",
            config.ModelType, folder, config.NumHiddenLayers, dtype, device, watch.Elapsed.TotalSeconds);
        return model;
    }

    /// <summary>
    /// Refuses a config.json that describes a model far larger than its safetensors files before anything is built
    /// (seen: hidden_size 1e9 allocated 3.6–4.5 GB before failing, and the web app kept it). The count from the config
    /// is the decoder's linear layers and embeddings; the files must hold at least nine tenths of it.
    /// </summary>
    internal static void CheckConfigAgainstWeights(ModelConfig config, SafeTensorsCheckpoint checkpoint, string folder)
    {
        long h = config.HiddenSize, hd = config.HeadDim, i = config.IntermediateSize;
        double perLayer = h * (double)config.NumAttentionHeads * hd * 2 + h * (double)config.NumKeyValueHeads * hd * 2 + 3.0 * h * i;
        double expected = perLayer * config.NumHiddenLayers + (double)config.VocabSize * h * (config.TieWordEmbeddings ? 1 : 2);
        double stored = checkpoint.Entries.Sum(e => e.Shape.Aggregate(1.0, (n, d) => n * d));
        if (expected > stored / 0.9 + 1_000_000)
            throw new ModelFormatException(
                $"{Path.Combine(folder, "config.json")} describes a model of about {expected / 1e9:0.##}B parameters (hidden_size {config.HiddenSize}, " +
                $"intermediate_size {config.IntermediateSize}, num_hidden_layers {config.NumHiddenLayers}, num_attention_heads {config.NumAttentionHeads}, " +
                $"vocab_size {config.VocabSize}), but its safetensors files hold {stored / 1e9:0.##}B. The config does not belong to these weights.");
    }

    /// <summary>The module tree for a config, weights on the meta device.</summary>
    public static CausalLM Create(ModelConfig config, ModelBuild build) => config.Family.Create(config, build);

    private static ScalarType DefaultDType(Device device, BackendInfo backend) =>
        device.type != DeviceType.CUDA ? ScalarType.Float32 : backend.ComputeDType;

    private static void Fill(CausalLM model, SafeTensorsCheckpoint checkpoint, ModelLoadOptions options)
    {
        bool tied = model.Config.TieWordEmbeddings;
        var targets = Targets(model, options, tied);

        // Match names first (headers only), so a wrong folder fails before any data is read.
        var plan = checkpoint.InFileOrder.Select(e => (Entry: e, Target: TargetOf(e.Name))).ToList();
        var unexpected = plan.Where(p => p.Target is not null && !targets.ContainsKey(p.Target)).Select(p => p.Entry.Name).ToList();
        var planned = plan.Where(p => p.Target is not null).Select(p => p.Target!).ToHashSet(StringComparer.Ordinal);
        var missing = targets.Keys.Where(k => !planned.Contains(k)).Select(k => tied && k == "lm_head.weight" ? model.EmbeddingKey : k).ToList();
        if (missing.Count > 0 || unexpected.Count > 0)
            throw new ModelFormatException(KeyReport(model, missing, unexpected));

        long total = checkpoint.TotalBytes, done = 0;
        foreach (var (entry, target) in plan)
        {
            options.CancellationToken.ThrowIfCancellationRequested();
            if (target is not null)
            {
                CheckShape(entry.Name, entry, model, target);
                using var scope = NewDisposeScope();
                using var cpu = checkpoint.Read(entry.Name);
                targets[target](cpu.to(model.DType).to(model.Device));
            }
            done += entry.Length;
            options.Progress?.Report(new ModelLoadProgress(done, total, entry.Name));
        }
        if (tied) model.TieEmbeddings();

        // The parameter a checkpoint key fills, or null for keys that are skipped. Tied: the checkpoint's embedding
        // fills lm_head and the embedding then shares it (one tensor); a stored lm_head.weight holds the same values.
        string? TargetOf(string key) =>
            tied && key == "lm_head.weight" ? null
            : key.EndsWith(".rotary_emb.inv_freq", StringComparison.Ordinal) ? null // old checkpoints store RoPE's buffer
            : tied && key == model.EmbeddingKey ? "lm_head.weight"
            : key;
    }

    /// <summary>Checkpoint key → what takes that tensor.</summary>
    private static Dictionary<string, Action<Tensor>> Targets(CausalLM model, ModelLoadOptions options, bool tied)
    {
        var targets = new Dictionary<string, Action<Tensor>>(StringComparer.Ordinal);
        foreach (var (name, module) in model.named_modules())
        {
            switch (module)
            {
                case LoraLinear linear:
                    bool denseOnly = tied && name == "lm_head";
                    targets[$"{name}.weight"] = source => LoadLinear(name, linear, source, denseOnly ? null : options);
                    if (linear.bias is not null) targets[$"{name}.bias"] = linear.LoadBias;
                    break;
                case ICheckpointWeight holder when !(tied && ReferenceEquals(module, model.InputEmbedding)):
                    targets[$"{name}.weight"] = holder.LoadWeight;
                    break;
            }
        }
        return targets;
    }

    private static void LoadLinear(string name, LoraLinear linear, Tensor source, ModelLoadOptions? options)
    {
        options?.BeforeLoadLinear?.Invoke(name, linear);
        if (options?.LoadLinearWeight?.Invoke(name, linear, source) == true) return;
        linear.LoadWeight(source);
    }

    private static void CheckShape(string key, SafeTensorEntry entry, CausalLM model, string target)
    {
        var parameter = model.get_parameter(target);
        if (parameter is not null && !parameter.shape.SequenceEqual(entry.Shape))
            throw new ModelFormatException(
                $"'{key}' has shape [{string.Join(", ", entry.Shape)}] in the checkpoint, but config.json gives [{string.Join(", ", parameter.shape)}]. The config and the weights disagree (is config.json from another model size?).");
        if (entry.ScalarType is not (ScalarType.Float32 or ScalarType.Float16 or ScalarType.BFloat16 or ScalarType.Float64))
            throw new ModelFormatException($"'{key}' is stored as {entry.DType}; model weights must be F32, F16 or BF16 (quantized checkpoints are not supported).");
    }

    private static string KeyReport(CausalLM model, List<string> missing, List<string> unexpected)
    {
        static string Few(List<string> keys) => string.Join(", ", keys.Take(5)) + (keys.Count > 5 ? $" and {keys.Count - 5} more" : "");
        var parts = new List<string>();
        if (missing.Count > 0) parts.Add($"{missing.Count} weights missing from the checkpoint ({Few(missing)})");
        if (unexpected.Count > 0) parts.Add($"{unexpected.Count} checkpoint tensors this {model.Config.ModelType} model has no place for ({Few(unexpected)})");
        return $"The weights do not match a {model.Config.ModelType} model: {string.Join("; ", parts)}. Is the folder complete, and is config.json the one for these weights?";
    }
}
