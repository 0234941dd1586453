using FineTune.Engine.Generation;

namespace FineTune.Tests.Generation;

/// <summary>HF logits-processor semantics on hand-checked rows.</summary>
public class LogitsProcessingTests
{
    [Fact]
    public void Repetition_penalty_divides_positive_and_multiplies_negative_seen_logits_once()
    {
        float[] logits = [2f, -1f, 3f, 0.5f];
        LogitsProcessing.ApplyRepetitionPenalty(logits, [0, 1, 1, 7], 2.0); // 7 is outside the vocabulary
        Assert.Equal(new[] { 1f, -2f, 3f, 0.5f }, logits);
    }

    [Fact]
    public void Temperature_divides_every_logit()
    {
        float[] logits = [1f, -2f, 4f];
        LogitsProcessing.ApplyTemperature(logits, 0.5);
        Assert.Equal(new[] { 2f, -4f, 8f }, logits);
    }

    [Fact]
    public void Top_k_keeps_the_k_best_and_their_ties()
    {
        float[] logits = [1f, 5f, 3f, 3f, 0f];
        LogitsProcessing.ApplyTopK(logits, 2);
        Assert.Equal(new[] { float.NegativeInfinity, 5f, 3f, 3f, float.NegativeInfinity }, logits);
    }

    [Fact]
    public void Top_p_removes_the_unlikely_tail_but_keeps_the_best_token()
    {
        // probabilities of [ln 0.5, ln 0.3, ln 0.15, ln 0.05] are 0.5, 0.3, 0.15, 0.05
        float[] logits = [MathF.Log(0.5f), MathF.Log(0.3f), MathF.Log(0.15f), MathF.Log(0.05f)];
        LogitsProcessing.ApplyTopP(logits, 0.8);
        // ascending cumulative: 0.05, 0.20 (<= 0.2 removed), 0.50 (kept) → the two least likely go
        Assert.True(float.IsNegativeInfinity(logits[3]));
        Assert.True(float.IsNegativeInfinity(logits[2]));
        Assert.False(float.IsNegativeInfinity(logits[1]));
        Assert.False(float.IsNegativeInfinity(logits[0]));

        float[] peaked = [10f, 0f, 0f];
        LogitsProcessing.ApplyTopP(peaked, 0.01);
        Assert.Equal(new[] { 10f, float.NegativeInfinity, float.NegativeInfinity }, peaked);
    }

    [Fact]
    public void Greedy_ignores_sampling_settings_but_applies_the_repetition_penalty()
    {
        var settings = new GenerationSettings { DoSample = false, Temperature = 0.1, TopK = 1, RepetitionPenalty = 4.0 };
        float[] logits = [4f, 3f];
        int next = LogitsProcessing.NextToken(logits, [0], settings, new Random(0));
        Assert.Equal(1, next); // 4 / 4 = 1 < 3
    }

    [Fact]
    public void Sampling_follows_the_softmax_distribution()
    {
        var random = new Random(123);
        float[] logits = [MathF.Log(0.7f), MathF.Log(0.2f), MathF.Log(0.1f), float.NegativeInfinity];
        var counts = new int[4];
        for (int i = 0; i < 20000; i++) counts[LogitsProcessing.Sample(logits, random)]++;
        Assert.Equal(0, counts[3]);
        Assert.InRange(counts[0] / 20000.0, 0.68, 0.72);
        Assert.InRange(counts[1] / 20000.0, 0.18, 0.22);
        Assert.InRange(counts[2] / 20000.0, 0.08, 0.12);
    }

    [Fact]
    public void Invalid_settings_name_the_bad_value()
    {
        var error = Assert.Throws<ArgumentException>(() => new GenerationSettings { DoSample = true, Temperature = 0 }.Validate());
        Assert.Contains("temperature", error.Message);
        Assert.Throws<ArgumentException>(() => new GenerationSettings { TopP = 1.5 }.Validate());
        Assert.Throws<ArgumentException>(() => new GenerationSettings { MaxNewTokens = 0 }.Validate());
    }
}
