using System.Text;

namespace FineTune.Web.Features.Learning;

/// <summary>
/// How close an answer is to the expected one: character similarity, 1 − (edit distance ÷ length of the longer text),
/// over Unicode characters after <see cref="Normalize"/>. One measure for Chinese and English alike: a Chinese
/// character and an English letter each count as one character, so no word segmentation is needed (token F1 would need
/// it for Chinese). 1 = the same text, 0 = nothing in common in any position (or one side empty).
/// </summary>
public static class AnswerSimilarity
{
    /// <summary>Similarity of <paramref name="answer"/> to <paramref name="expected"/>, in [0, 1]. Both empty: 1.</summary>
    public static double Score(string expected, string answer)
    {
        int[] a = Characters(Normalize(expected));
        int[] b = Characters(Normalize(answer));
        int longer = Math.Max(a.Length, b.Length);
        return longer == 0 ? 1.0 : 1.0 - (double)EditDistance(a, b) / longer;
    }

    /// <summary>Whether two answers differ once normalized (the base model's and the fine-tuned model's).</summary>
    public static bool Differ(string first, string second) => !string.Equals(Normalize(first), Normalize(second), StringComparison.Ordinal);

    /// <summary>
    /// What is compared: NFKC (full-width letters and digits become the usual ones, so "ＡＢＣ１" equals "ABC1"), lower
    /// case, every run of white space one space, trimmed. Punctuation stays: "。" and "." are different characters.
    /// </summary>
    public static string Normalize(string text)
    {
        var folded = text.Normalize(NormalizationForm.FormKC).ToLowerInvariant();
        var result = new StringBuilder(folded.Length);
        bool space = false;
        foreach (char c in folded)
        {
            if (char.IsWhiteSpace(c)) { space = result.Length > 0; continue; }
            if (space) result.Append(' ');
            space = false;
            result.Append(c);
        }
        return result.ToString();
    }

    /// <summary>Levenshtein distance (insert, delete, substitute; each costs 1), two rows of the table.</summary>
    public static int EditDistance(IReadOnlyList<int> a, IReadOnlyList<int> b)
    {
        if (a.Count < b.Count) (a, b) = (b, a); // b is the shorter: rows of its length
        var previous = new int[b.Count + 1];
        var current = new int[b.Count + 1];
        for (int j = 0; j <= b.Count; j++) previous[j] = j;
        for (int i = 1; i <= a.Count; i++)
        {
            current[0] = i;
            for (int j = 1; j <= b.Count; j++)
            {
                int substitute = previous[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1);
                current[j] = Math.Min(substitute, Math.Min(previous[j], current[j - 1]) + 1);
            }
            (previous, current) = (current, previous);
        }
        return previous[b.Count];
    }

    /// <summary>The text's Unicode scalar values (a character outside the BMP, such as 𠀋, counts once, not as two UTF-16 units).</summary>
    private static int[] Characters(string text)
    {
        var runes = new List<int>(text.Length);
        foreach (var rune in text.EnumerateRunes()) runes.Add(rune.Value);
        return [.. runes];
    }
}
