using System.Text.Json;

namespace FineTune.Tests.Models;

/// <summary>The tiny HF models under FineTune.Tests/Fixtures/models (see its README.md) and their golden outputs.</summary>
public static class ModelFixtures
{
    public static readonly string[] Names = ["qwen2", "qwen2-v5", "qwen3", "llama3", "mistral", "qwen-v1"];

    public static string Folder(string name)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "FineTune.Tests", "Fixtures", "models", name);
            if (Directory.Exists(candidate)) return candidate;
        }
        throw new DirectoryNotFoundException($"Fixture model '{name}' was not found above {AppContext.BaseDirectory}.");
    }

    public static Golden LoadGolden(string name)
    {
        using var stream = File.OpenRead(Path.Combine(Folder(name), "golden.json"));
        return JsonSerializer.Deserialize<Golden>(stream, new JsonSerializerOptions { PropertyNameCaseInsensitive = true })
            ?? throw new InvalidDataException($"golden.json of {name} is empty.");
    }
}

public sealed record Golden(
    string Transformers,
    List<GoldenLogits> Logits,
    List<GoldenGreedy> Greedy,
    [property: System.Text.Json.Serialization.JsonPropertyName("padded_batch")] GoldenBatch PaddedBatch);

public sealed record GoldenLogits(string Text, [property: System.Text.Json.Serialization.JsonPropertyName("input_ids")] int[] InputIds, string Tensor);

public sealed record GoldenGreedy([property: System.Text.Json.Serialization.JsonPropertyName("input_ids")] int[] InputIds, [property: System.Text.Json.Serialization.JsonPropertyName("new_tokens")] int[] NewTokens);

public sealed record GoldenBatch(
    [property: System.Text.Json.Serialization.JsonPropertyName("input_ids")] int[][] InputIds,
    [property: System.Text.Json.Serialization.JsonPropertyName("attention_mask")] int[][] AttentionMask,
    [property: System.Text.Json.Serialization.JsonPropertyName("position_ids")] int[][] PositionIds,
    string Tensor);
