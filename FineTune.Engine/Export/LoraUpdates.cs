using FineTune.Engine.Adapters;
using FineTune.Engine.Models;
using static TorchSharp.torch;

namespace FineTune.Engine.Export;

/// <summary>
/// A PEFT adapter read for merging into checkpoint tensors as they stream by: the update of a base weight
/// "model.layers.0.self_attn.q_proj.weight" is B·A·scaling of the adapter's layer "model.layers.0.self_attn.q_proj"
/// (the same product as <see cref="LoraLinear.DeltaWeight()"/>). Adapters are small; they are read whole.
/// </summary>
public sealed class LoraUpdates : IDisposable
{
    private readonly Dictionary<string, (Tensor A, Tensor B)> _layers;
    private readonly double _scaling;

    private LoraUpdates(Dictionary<string, (Tensor A, Tensor B)> layers, double scaling)
    {
        _layers = layers;
        _scaling = scaling;
    }

    /// <summary>Layers with an update.</summary>
    public int Count => _layers.Count;

    public static LoraUpdates Open(string folder)
    {
        var settings = PeftAdapter.ReadSettings(folder);
        string path = Path.Combine(folder, PeftAdapter.WeightsFile);
        if (!File.Exists(path)) throw new AdapterFormatException($"'{folder}' has no {PeftAdapter.WeightsFile}.");
        var tensors = SafeTensors.LoadAll(path);
        var layers = new Dictionary<string, (Tensor, Tensor)>(StringComparer.Ordinal);
        const string prefix = "base_model.model.";
        foreach (var (key, a) in tensors)
        {
            if (!key.EndsWith(".lora_A.weight", StringComparison.Ordinal)) continue;
            string keyB = key[..^".lora_A.weight".Length] + ".lora_B.weight";
            if (!tensors.TryGetValue(keyB, out var b)) throw new AdapterFormatException($"{path} has {key} but no {keyB}.");
            string layer = key[..^".lora_A.weight".Length];
            if (layer.StartsWith(prefix, StringComparison.Ordinal)) layer = layer[prefix.Length..];
            layers[layer] = (a, b);
        }
        foreach (var t in tensors.Values.Except(layers.Values.SelectMany(l => new[] { l.Item1, l.Item2 }))) t.Dispose();
        if (layers.Count == 0) throw new AdapterFormatException($"{path} holds no lora_A/lora_B weights.");
        return new LoraUpdates(layers, settings.Scaling);
    }

    /// <summary>Every adapted layer must be a weight of the checkpoint (else the adapter belongs to another model).</summary>
    public void CheckTargets(IReadOnlySet<string> checkpointKeys, bool tiedEmbeddings)
    {
        foreach (var layer in _layers.Keys)
        {
            if (layer == "lm_head" && tiedEmbeddings)
                throw new AdapterFormatException("The adapter changes lm_head, which this model ties to its embedding; such an adapter cannot be merged into one GGUF output matrix.");
            if (!checkpointKeys.Contains(layer + ".weight"))
                throw new AdapterFormatException($"The adapter has weights for '{layer}', which this model does not have. Was it trained on another base model?");
        }
    }

    /// <summary>The fp32 update (out, in) for a checkpoint weight, or null when the adapter does not touch it.</summary>
    public Tensor? DeltaFor(string checkpointKey)
    {
        if (!checkpointKey.EndsWith(".weight", StringComparison.Ordinal)) return null;
        return _layers.TryGetValue(checkpointKey[..^".weight".Length], out var ab)
            ? LoraLinear.DeltaWeight(ab.A, ab.B, _scaling)
            : null;
    }

    public void Dispose()
    {
        foreach (var (a, b) in _layers.Values)
        {
            a.Dispose();
            b.Dispose();
        }
    }
}
