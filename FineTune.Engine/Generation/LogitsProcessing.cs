namespace FineTune.Engine.Generation;

/// <summary>
/// HF's logits processors for one row of next-token logits (transformers generation/logits_process.py), on a
/// float array: the vocabulary row is copied off the device once per token, and the arithmetic here is small.
/// Removed tokens get −∞ (HF's filter_value).
/// </summary>
public static class LogitsProcessing
{
    /// <summary>RepetitionPenaltyLogitsProcessor: every id already in the sequence (prompt included) is penalised once.</summary>
    public static void ApplyRepetitionPenalty(Span<float> logits, IEnumerable<int> seenIds, double penalty)
    {
        if (penalty == 1.0) return;
        foreach (int id in seenIds.Distinct())
        {
            if ((uint)id >= (uint)logits.Length) continue;
            float score = logits[id];
            logits[id] = (float)(score < 0 ? score * penalty : score / penalty);
        }
    }

    /// <summary>TemperatureLogitsWarper: logits / temperature.</summary>
    public static void ApplyTemperature(Span<float> logits, double temperature)
    {
        if (temperature == 1.0) return;
        for (int i = 0; i < logits.Length; i++) logits[i] = (float)(logits[i] / temperature);
    }

    /// <summary>TopKLogitsWarper: removes tokens scoring below the k-th highest (ties with it are kept).</summary>
    public static void ApplyTopK(Span<float> logits, int topK)
    {
        if (topK <= 0 || topK >= logits.Length) return;
        var smallestOfBest = new PriorityQueue<float, float>(topK + 1); // min-heap of the k best: O(V log k)
        foreach (float v in logits)
        {
            if (smallestOfBest.Count < topK) smallestOfBest.Enqueue(v, v);
            else if (v > smallestOfBest.Peek()) smallestOfBest.EnqueueDequeue(v, v);
        }
        float threshold = smallestOfBest.Peek();
        for (int i = 0; i < logits.Length; i++)
            if (logits[i] < threshold) logits[i] = float.NegativeInfinity;
    }

    /// <summary>
    /// TopPLogitsWarper: sorts ascending, removes tokens while the cumulative probability stays ≤ 1 − top_p,
    /// always keeping the most likely token. Tokens already at −∞ have probability 0 and stay removed, so only
    /// the finite ones are sorted.
    /// </summary>
    public static void ApplyTopP(Span<float> logits, double topP)
    {
        if (topP >= 1.0) return;
        var finite = new List<int>(logits.Length);
        for (int i = 0; i < logits.Length; i++)
            if (!float.IsNegativeInfinity(logits[i])) finite.Add(i);
        int[] order = finite.ToArray();
        float[] keys = new float[order.Length];
        for (int j = 0; j < order.Length; j++) keys[j] = logits[order[j]];
        Array.Sort(keys, order); // ascending
        double[] probabilities = Softmax(keys);
        double cumulative = 0;
        for (int rank = 0; rank < order.Length - 1; rank++) // the last (most likely) is always kept
        {
            cumulative += probabilities[rank];
            if (cumulative <= 1 - topP) logits[order[rank]] = float.NegativeInfinity;
            else break;
        }
    }

    /// <summary>Numerically stable softmax in double precision; −∞ entries get probability 0.</summary>
    public static double[] Softmax(ReadOnlySpan<float> logits)
    {
        float max = float.NegativeInfinity;
        foreach (float v in logits) if (v > max) max = v;
        var result = new double[logits.Length];
        double sum = 0;
        for (int i = 0; i < logits.Length; i++)
        {
            result[i] = float.IsNegativeInfinity(logits[i]) ? 0 : Math.Exp(logits[i] - max);
            sum += result[i];
        }
        for (int i = 0; i < result.Length; i++) result[i] /= sum;
        return result;
    }

    /// <summary>The index of the largest logit (the first one on ties, as torch.argmax).</summary>
    public static int ArgMax(ReadOnlySpan<float> logits)
    {
        int best = 0;
        for (int i = 1; i < logits.Length; i++)
            if (logits[i] > logits[best]) best = i;
        return best;
    }

    /// <summary>Draws an index with probability softmax(logits) using <paramref name="random"/>.</summary>
    public static int Sample(ReadOnlySpan<float> logits, Random random)
    {
        double[] probabilities = Softmax(logits);
        double u = random.NextDouble();
        double cumulative = 0;
        int last = -1;
        for (int i = 0; i < probabilities.Length; i++)
        {
            if (probabilities[i] <= 0) continue;
            last = i;
            cumulative += probabilities[i];
            if (u < cumulative) return i;
        }
        return last; // rounding left u just above the total
    }

    /// <summary>The next token for one row of logits, as HF's sample/greedy step with these settings.</summary>
    public static int NextToken(Span<float> logits, IReadOnlyList<int> sequence, GenerationSettings settings, Random random)
    {
        ApplyRepetitionPenalty(logits, sequence, settings.RepetitionPenalty);
        if (!settings.DoSample) return ArgMax(logits);
        ApplyTemperature(logits, settings.Temperature);
        ApplyTopK(logits, settings.TopK);
        ApplyTopP(logits, settings.TopP);
        return Sample(logits, random);
    }
}
