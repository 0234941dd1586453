using System.Text.Json;
using System.Text.Json.Nodes;
using FineTune.Engine.Hub;
using FineTune.Engine.Models;
using static TorchSharp.torch;

namespace FineTune.Engine.Adapters;

/// <summary>The adapter folder is not one we (or PEFT) can load into this model.</summary>
public sealed class AdapterFormatException : IOException
{
    public AdapterFormatException(string message) : base(message) { }

    public AdapterFormatException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>
/// PEFT's on-disk adapter format: adapter_config.json (LoraConfig.to_dict as save_pretrained writes it)
/// and adapter_model.safetensors with keys "base_model.model.&lt;module path&gt;.lora_A.weight" (r, in) and
/// ".lora_B.weight" (out, r), metadata {"format":"pt"}.
/// </summary>
public static class PeftAdapter
{
    public const string ConfigFile = "adapter_config.json";
    public const string WeightsFile = "adapter_model.safetensors";
    private const string KeyPrefix = "base_model.model.";

    /// <summary>The adapter_config.json PEFT writes for a LoraConfig with these settings (inference_mode true, as after save).</summary>
    public static JsonObject BuildConfig(LoraSettings settings, string baseModelNameOrPath, IReadOnlyList<string> targetModules)
    {
        return new JsonObject
        {
            ["alpha_pattern"] = new JsonObject(),
            ["auto_mapping"] = null,
            ["base_model_name_or_path"] = baseModelNameOrPath,
            ["bias"] = "none",
            ["fan_in_fan_out"] = false,
            ["inference_mode"] = true,
            ["init_lora_weights"] = true,
            ["layer_replication"] = null,
            ["layers_pattern"] = null,
            ["layers_to_transform"] = null,
            ["loftq_config"] = new JsonObject(),
            ["lora_alpha"] = settings.Alpha == Math.Floor(settings.Alpha) ? JsonValue.Create((long)settings.Alpha) : JsonValue.Create(settings.Alpha),
            ["lora_dropout"] = settings.Dropout,
            ["megatron_config"] = null,
            ["megatron_core"] = "megatron.core",
            ["modules_to_save"] = null,
            ["peft_type"] = "LORA",
            ["r"] = settings.Rank,
            ["rank_pattern"] = new JsonObject(),
            ["revision"] = null,
            ["target_modules"] = new JsonArray([.. targetModules.Select(t => (JsonNode)t)]),
            ["task_type"] = "CAUSAL_LM",
            ["use_dora"] = false,
            ["use_rslora"] = settings.UseRsLora,
        };
    }

    /// <summary>
    /// What PEFT records as base_model_name_or_path for a model folder: the Hub id ("Qwen/Qwen2.5-0.5B-Instruct") when
    /// config.json's _name_or_path holds one, else the folder's full path.
    /// </summary>
    public static string BaseModelName(string modelFolder)
    {
        try
        {
            var config = JsonNode.Parse(File.ReadAllText(Path.Combine(modelFolder, "config.json")));
            if (config?["_name_or_path"] is JsonValue value && value.TryGetValue(out string? name)
                && ModelReference.IsHubId(name))
                return name;
        }
        catch (Exception e) when (e is JsonException or IOException)
        {
            // ModelLoader reports a missing or broken config.json with a better message.
        }
        return Path.GetFullPath(modelFolder).TrimEnd(Path.DirectorySeparatorChar);
    }

    /// <summary>PEFT's state-dict key for a layer's LoRA matrix: base_model.model.{layer}.lora_A.weight.</summary>
    public static string Key(string layerName, char which) => $"{KeyPrefix}{layerName}.lora_{which}.weight";

    /// <summary>The adapter weights of every layer that has one, under PEFT's key names (fp32 copies on CPU; caller disposes).</summary>
    public static Dictionary<string, Tensor> StateDict(IEnumerable<(string Name, LoraLinear Layer)> linears)
    {
        var tensors = new Dictionary<string, Tensor>();
        foreach (var (name, layer) in linears)
        {
            if (!layer.HasAdapter) continue;
            tensors[Key(name, 'A')] = layer.lora_A!.weight!.detach().cpu().clone();
            tensors[Key(name, 'B')] = layer.lora_B!.weight!.detach().cpu().clone();
        }
        return tensors;
    }

    /// <summary>Writes adapter_config.json and adapter_model.safetensors into <paramref name="folder"/>.</summary>
    public static void Save(string folder, IEnumerable<(string Name, LoraLinear Layer)> linears, LoraSettings settings, string baseModelNameOrPath)
    {
        Directory.CreateDirectory(folder);
        var tensors = StateDict(linears);
        try
        {
            if (tensors.Count == 0) throw new InvalidOperationException("The model has no LoRA adapter to save.");
            SafeTensors.Save(Path.Combine(folder, WeightsFile), tensors, new Dictionary<string, string> { ["format"] = "pt" });
            var config = BuildConfig(settings, baseModelNameOrPath, settings.Targets);
            File.WriteAllText(Path.Combine(folder, ConfigFile), config.ToJsonString(new JsonSerializerOptions { WriteIndented = true }) + "\n");
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
    }

    /// <summary>Reads r, lora_alpha, lora_dropout, target_modules and use_rslora from adapter_config.json.</summary>
    public static LoraSettings ReadSettings(string folder)
    {
        string path = Path.Combine(folder, ConfigFile);
        if (!File.Exists(path)) throw new AdapterFormatException($"'{folder}' has no {ConfigFile}; it is not a PEFT adapter folder.");
        string field = "(the file)";
        try
        {
            var config = JsonNode.Parse(File.ReadAllText(path))?.AsObject()
                ?? throw new AdapterFormatException($"{path} is empty.");
            field = "peft_type";
            string peftType = config["peft_type"]?.GetValue<string>() ?? "LORA";
            if (!string.Equals(peftType, "LORA", StringComparison.OrdinalIgnoreCase))
                throw new AdapterFormatException($"{path} describes a {peftType} adapter; only LORA adapters can be loaded.");
            field = "use_dora";
            if (config["use_dora"]?.GetValue<bool>() == true)
                throw new AdapterFormatException($"{path} describes a DoRA adapter (use_dora true), which is not supported.");
            field = "r";
            int r = config["r"]?.GetValue<int>() ?? throw new AdapterFormatException($"{path} has no 'r'.");
            if (r <= 0) throw new AdapterFormatException($"{path}: 'r' is {r}; a LoRA rank is a positive whole number.");
            field = "lora_alpha";
            double alpha = config["lora_alpha"] is JsonNode a ? a.GetValue<double>() : r;
            field = "lora_dropout";
            double dropout = config["lora_dropout"] is JsonNode d ? d.GetValue<double>() : 0;
            if (dropout is < 0 or >= 1 || !double.IsFinite(alpha)) throw new AdapterFormatException($"{path}: lora_alpha {alpha} / lora_dropout {dropout} are out of range.");
            field = "use_rslora";
            bool rs = config["use_rslora"]?.GetValue<bool>() ?? false;
            field = "target_modules";
            List<string>? targets = config["target_modules"] switch
            {
                JsonArray arr => [.. arr.Select(n => (n ?? throw new FormatException("A null entry.")).GetValue<string>())],
                JsonValue v when v.TryGetValue(out string? s) => [s],
                _ => null,
            };
            return new LoraSettings(r, alpha, dropout, targets, rs);
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            // Malformed JSON, or a field of the wrong type ("r": "sixteen"): name the file and the field, not a stack trace.
            throw new AdapterFormatException($"{path} cannot be read at {field}: {e.Message} Re-save the adapter with PEFT or FineTune.", e);
        }
    }

    /// <summary>
    /// Loads an adapter folder (ours or PEFT-made) into the model: attaches LoRA to each layer named in
    /// the weights file and copies lora_A / lora_B. Returns the names of the layers that got an adapter.
    /// </summary>
    public static IReadOnlyList<string> Load(string folder, IEnumerable<(string Name, LoraLinear Layer)> linears)
    {
        var settings = ReadSettings(folder);
        string weightsPath = Path.Combine(folder, WeightsFile);
        if (!File.Exists(weightsPath))
            throw new AdapterFormatException($"'{folder}' has no {WeightsFile}. (adapter_model.bin from old PEFT versions is not supported: re-save it with safetensors.)");
        var byName = linears.ToDictionary(l => l.Name, l => l.Layer);
        Dictionary<string, Tensor> tensors;
        try
        {
            tensors = SafeTensors.LoadAll(weightsPath);
        }
        catch (ModelFormatException e)
        {
            // An adapter problem for the caller (an IOException, as a bad adapter folder always is), not a base-model one.
            throw new AdapterFormatException($"{weightsPath} cannot be read: {e.Message}", e);
        }
        var loaded = new List<string>();
        try
        {
            foreach (var key in tensors.Keys.Where(k => k.EndsWith(".lora_A.weight", StringComparison.Ordinal)).Order(StringComparer.Ordinal))
            {
                string layerName = LayerName(key, ".lora_A.weight");
                string keyB = key[..^".lora_A.weight".Length] + ".lora_B.weight";
                if (!tensors.TryGetValue(keyB, out var b))
                    throw new AdapterFormatException($"{weightsPath} has {key} but no {keyB}.");
                if (!byName.TryGetValue(layerName, out var layer))
                    throw new AdapterFormatException($"The adapter has weights for '{layerName}', which this model does not have. Was it trained on another base model? Layers here look like: {string.Join(", ", byName.Keys.Take(4))}.");
                var a = tensors[key];
                int rank = (int)a.shape[0];
                if (a.shape[1] != layer.InFeatures || b.shape[0] != layer.OutFeatures || b.shape[1] != rank)
                    throw new AdapterFormatException($"The adapter's '{layerName}' has lora_A [{string.Join(", ", a.shape)}] and lora_B [{string.Join(", ", b.shape)}], which do not fit a {layer.InFeatures}→{layer.OutFeatures} layer. Was it trained on another base model?");
                if (!layer.HasAdapter) layer.AttachLora(rank, settings.Alpha, settings.Dropout, settings.UseRsLora);
                using (no_grad())
                {
                    layer.lora_A!.weight!.copy_(a);
                    layer.lora_B!.weight!.copy_(b);
                }
                loaded.Add(layerName);
            }
        }
        finally
        {
            foreach (var t in tensors.Values) t.Dispose();
        }
        if (loaded.Count == 0) throw new AdapterFormatException($"{weightsPath} holds no lora_A/lora_B weights.");
        return loaded;
    }

    private static string LayerName(string key, string suffix)
    {
        string name = key[..^suffix.Length];
        if (name.StartsWith(KeyPrefix, StringComparison.Ordinal)) name = name[KeyPrefix.Length..];
        return name;
    }
}
