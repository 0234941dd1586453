using System.Text.Json;
using FineTune.Engine.Models;

namespace FineTune.Engine.Generation;

/// <summary>
/// How to pick each next token, with HF generate()'s meaning: greedy unless <see cref="DoSample"/>; when sampling,
/// temperature → top_k → top_p; the repetition penalty applies in both modes.
/// </summary>
public sealed record GenerationSettings
{
    public int MaxNewTokens { get; init; } = 256;

    public bool DoSample { get; init; }

    public double Temperature { get; init; } = 1.0;

    /// <summary>Keep the smallest set of tokens whose probability adds up to at least this; 1 keeps all.</summary>
    public double TopP { get; init; } = 1.0;

    /// <summary>Keep the k most likely tokens; 0 keeps all. HF's default is 50.</summary>
    public int TopK { get; init; } = 50;

    /// <summary>HF RepetitionPenaltyLogitsProcessor: seen tokens' logits divided (positive) or multiplied (negative) by this; 1 = off.</summary>
    public double RepetitionPenalty { get; init; } = 1.0;

    /// <summary>Seed for sampling; the same seed, prompt and settings give the same tokens. Null: a random seed.</summary>
    public int? Seed { get; init; }

    /// <summary>Generation stops after any of these ids (the stop id is returned as the last token).</summary>
    public IReadOnlySet<int> StopTokenIds { get; init; } = new HashSet<int>();

    public static GenerationSettings Greedy(int maxNewTokens, IEnumerable<int>? stopTokenIds = null) =>
        new() { MaxNewTokens = maxNewTokens, StopTokenIds = (stopTokenIds ?? []).ToHashSet() };

    /// <summary>Checks the values; throws ArgumentException naming the bad one.</summary>
    public void Validate()
    {
        if (MaxNewTokens < 1) throw new ArgumentException($"max_new_tokens must be at least 1; it is {MaxNewTokens}.");
        if (DoSample && !(Temperature > 0)) throw new ArgumentException($"temperature must be greater than 0 when sampling; it is {Temperature}. Use greedy decoding for deterministic answers.");
        if (!(TopP > 0 && TopP <= 1)) throw new ArgumentException($"top_p must be in (0, 1]; it is {TopP}.");
        if (TopK < 0) throw new ArgumentException($"top_k must be 0 (off) or positive; it is {TopK}.");
        if (!(RepetitionPenalty > 0)) throw new ArgumentException($"repetition_penalty must be greater than 0; it is {RepetitionPenalty}.");
    }

    /// <summary>
    /// The model's defaults, as HF generate() would use them: generation_config.json (do_sample, temperature,
    /// top_p, top_k, repetition_penalty, max_new_tokens), stop ids from its eos_token_id and single-token
    /// stop_words_ids (Qwen v1) plus config.json's eos_token_id, and any <paramref name="extraStopIds"/>
    /// (e.g. the tokenizer's eos token such as &lt;|im_end|&gt;).
    /// </summary>
    public static GenerationSettings FromModelFolder(string folder, ModelConfig config, IEnumerable<int>? extraStopIds = null)
    {
        var stops = new HashSet<int>(config.EosTokenIds);
        foreach (int id in extraStopIds ?? []) stops.Add(id);
        var settings = new GenerationSettings();
        string path = Path.Combine(folder, "generation_config.json");
        if (File.Exists(path))
        {
            try
            {
                using var document = JsonDocument.Parse(File.ReadAllBytes(path));
                var root = document.RootElement;
                foreach (int id in Ints(root, "eos_token_id")) stops.Add(id);
                if (root.TryGetProperty("stop_words_ids", out var words) && words.ValueKind == JsonValueKind.Array)
                    foreach (var word in words.EnumerateArray())
                        if (word.ValueKind == JsonValueKind.Array && word.GetArrayLength() == 1 && word[0].TryGetInt32(out int single))
                            stops.Add(single);
                settings = settings with
                {
                    DoSample = Bool(root, "do_sample") ?? settings.DoSample,
                    Temperature = Number(root, "temperature") ?? settings.Temperature,
                    TopP = Number(root, "top_p") ?? settings.TopP,
                    TopK = (int?)Number(root, "top_k") ?? settings.TopK,
                    RepetitionPenalty = Number(root, "repetition_penalty") ?? settings.RepetitionPenalty,
                    MaxNewTokens = (int?)Number(root, "max_new_tokens") ?? settings.MaxNewTokens,
                };
            }
            catch (JsonException e)
            {
                throw new ModelFormatException($"{path} is not valid JSON: {e.Message}", e);
            }
        }
        return settings with { StopTokenIds = stops };
    }

    private static IEnumerable<int> Ints(JsonElement root, string key)
    {
        if (!root.TryGetProperty(key, out var value)) yield break;
        if (value.ValueKind == JsonValueKind.Number && value.TryGetInt32(out int one)) yield return one;
        if (value.ValueKind == JsonValueKind.Array)
            foreach (var item in value.EnumerateArray())
                if (item.TryGetInt32(out int id)) yield return id;
    }

    private static double? Number(JsonElement root, string key) =>
        root.TryGetProperty(key, out var v) && v.ValueKind == JsonValueKind.Number ? v.GetDouble() : null;

    private static bool? Bool(JsonElement root, string key) =>
        root.TryGetProperty(key, out var v) && v.ValueKind is JsonValueKind.True or JsonValueKind.False ? v.GetBoolean() : null;
}
