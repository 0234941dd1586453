using System.Collections.Concurrent;
using FineTune.Engine.Backend;
using FineTune.Engine.Hub;
using FineTune.Engine.Models;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.Models;

/// <summary>A model offered in the model step; its dimensions are its config.json's (bundled, as the Hub serves it).</summary>
/// <param name="Id">Hub id, used as the run's model.</param>
/// <param name="DisplayName">Shown as is (model names are not translated).</param>
/// <param name="NoteKey">Resource key of a one-line note.</param>
public sealed record ModelPreset(string Id, string DisplayName, string NoteKey, bool Gated = false)
{
    /// <summary>The preset's config.json, bundled (Features/Models/Presets/&lt;org&gt;--&lt;name&gt;.json), parsed by the engine.</summary>
    public ModelConfig Config => ModelCatalog.PresetConfig(Id);

    /// <summary>The family registry's entry for its model_type: what LoRA adapts in it, its linear names.</summary>
    public ModelFamily Family => Config.Family;

    /// <summary>The projections LoRA adapts by default in this family (q/k/v/o; Qwen v1 fuses q/k/v in c_attn).</summary>
    public IReadOnlyList<string> TargetModules => Family.DefaultLoraTargets;
}

public static class ModelCatalog
{
    /// <summary>The tutorial's targets for Llama-style families (Qwen2): q/k/v/o.</summary>
    public static IReadOnlyList<string> AttentionTargets => ModelFamilies.Get("qwen2").DefaultLoraTargets;

    public static readonly IReadOnlyList<ModelPreset> Presets =
    [
        new("Qwen/Qwen2.5-0.5B-Instruct", "Qwen2.5 0.5B Instruct", "Model_Note_Small"),
        new("Qwen/Qwen2.5-1.5B-Instruct", "Qwen2.5 1.5B Instruct", "Model_Note_Medium"),
        new("Qwen/Qwen2.5-7B-Instruct", "Qwen2.5 7B Instruct", "Model_Note_Large"),
        new("Qwen/Qwen-7B", "Qwen-7B (tutorial)", "Model_Note_Tutorial"),
        new("meta-llama/Llama-3.1-8B-Instruct", "Llama 3.1 8B Instruct", "Model_Note_Llama", Gated: true),
    ];

    /// <summary>The Hugging Face cache the web app downloads into (HF_HUB_CACHE, HF_HOME...; read as its HubOptions reads them).</summary>
    private static readonly HubOptions DefaultHub = new();

    private static readonly ConcurrentDictionary<string, ModelConfig> PresetConfigs = new(StringComparer.Ordinal);
    private static readonly ConcurrentDictionary<string, ModelFacts> ConfigFacts = new(StringComparer.Ordinal);

    public static ModelPreset? Find(string id) => Presets.FirstOrDefault(p => string.Equals(p.Id, id, StringComparison.OrdinalIgnoreCase));

    internal static ModelConfig PresetConfig(string id) => PresetConfigs.GetOrAdd(id, key =>
    {
        string resource = "FineTune.Web.Presets." + key.Replace("/", "--", StringComparison.Ordinal) + ".json";
        using var stream = typeof(ModelCatalog).Assembly.GetManifestResourceStream(resource)
            ?? throw new InvalidOperationException($"The preset {key} has no bundled config.json ({resource}).");
        using var reader = new StreamReader(stream);
        return ModelConfig.Parse(reader.ReadToEnd(), $"{key}/config.json");
    });

    /// <summary>
    /// The engine's facts of the chosen model (exact, from the model built on the meta device): a local folder's; a Hub
    /// model's from its config.json in the Hugging Face cache (fetched alone by <see cref="ModelDownloadService.FetchConfig"/>
    /// before any weights); a preset's from its bundled config.json. Null when not known (yet), or where libtorch cannot load.
    /// </summary>
    public static ModelFacts? FactsOf(TrainingSettings settings, HubOptions? hub = null)
    {
        if (!ComputeBackend.Current.CanCompute) return null;
        try
        {
            if (settings.Source == ModelSource.Local)
                return ModelReference.IsModelFolder(settings.Model) ? ModelFacts.Of(settings.Model) : null;
            if (!ModelReference.IsHubId(settings.Model)) return null;
            if (HubDownloader.CachedConfigFolder(hub ?? DefaultHub, settings.Model) is { } cached) return ModelFacts.Of(cached);
            return Find(settings.Model) is { } preset ? ConfigFacts.GetOrAdd(preset.Id, _ => ModelFacts.Of(preset.Config)) : null;
        }
        catch (Exception e) when (e is ModelFormatException or UnsupportedModelException or IOException or UnauthorizedAccessException)
        {
            return null;
        }
    }

    /// <summary>
    /// The chosen model's linear-layer names (what LoRA can target): every layer of a local folder or a Hub model whose config
    /// is cached, the family's leaf names for a preset; null when not known before download.
    /// </summary>
    public static IReadOnlyList<string>? LinearNames(TrainingSettings settings) =>
        settings.Source == ModelSource.Local ? FactsOf(settings)?.LinearNames
        : Find(settings.Model)?.Family.LinearNames ?? FactsOf(settings)?.LinearNames;
}
