using FineTune.Web.Features.Learning;

namespace FineTune.Tests.Web.Features.Learning;

/// <summary>The "did it learn?" measure: character similarity, 1 − edit distance ÷ longer length, on zh-TW and English text.</summary>
public sealed class AnswerSimilarityTests
{
    [Theory]
    [InlineData("kitten", "sitting", 3)] // the textbook example: k→s, e→i, +g
    [InlineData("可以退貨", "可以退貨", 0)]
    [InlineData("可以退貨", "不可以退貨", 1)]
    [InlineData("七天內可退貨", "三十天內可退貨", 2)] // 七→三, +十
    [InlineData("", "abc", 3)]
    public void Edit_distance_counts_inserts_deletes_and_substitutions_per_character(string a, string b, int distance)
    {
        Assert.Equal(distance, AnswerSimilarity.EditDistance(a.EnumerateRunes().Select(r => r.Value).ToArray(), b.EnumerateRunes().Select(r => r.Value).ToArray()));
        Assert.Equal(distance, AnswerSimilarity.EditDistance(b.EnumerateRunes().Select(r => r.Value).ToArray(), a.EnumerateRunes().Select(r => r.Value).ToArray()));
    }

    [Theory]
    // Chinese: one character, one unit. 14 characters, the answer lacks "以" and "。": 1 − 2/14.
    [InlineData("可以，購買後七天內可以退貨。", "可以，購買後七天內可退貨", 1 - 2.0 / 14)]
    [InlineData("我們的產品提供一年免費保固服務。", "我們的產品提供一年免費保固服務。", 1.0)]
    [InlineData("可以退貨", "請問您", 0.0)] // nothing in common at any position
    // English: letters, spaces and punctuation are characters. "kitten"/"sitting": 1 − 3/7.
    [InlineData("kitten", "sitting", 1 - 3.0 / 7)]
    [InlineData("Returns are accepted within 7 days.", "returns are accepted within 7 days.", 1.0)] // case does not count
    [InlineData("Returns are accepted within 7 days.", "Returns are accepted within 30 days.", 1 - 2.0 / 36)]
    // Normalized first: full-width letters and digits, runs of white space.
    [InlineData("ＡＢＣ１２３", "abc123", 1.0)]
    [InlineData("Hello   world\n", " hello world", 1.0)]
    [InlineData("", "", 1.0)]
    [InlineData("有答案", "", 0.0)]
    public void Score_is_one_minus_the_edit_distance_over_the_longer_length(string expected, string answer, double score)
    {
        Assert.Equal(score, AnswerSimilarity.Score(expected, answer), 10);
    }

    [Fact]
    public void A_character_outside_the_basic_plane_counts_once()
    {
        // 𠀋 is two UTF-16 units; counted as units, "𠀋a" vs "𠀋b" would read 1 − 1/3 instead of 1 − 1/2.
        Assert.Equal(0.5, AnswerSimilarity.Score("𠀋a", "𠀋b"), 10);
    }

    [Fact]
    public void Scores_stay_within_zero_and_one_and_do_not_depend_on_the_order()
    {
        string[] texts = ["", "a", "可以退貨", "Returns within 7 days.", "我們的產品提供一年免費保固服務，在保固期內如有任何品質問題都可以免費維修或更換。", "保固 one year 一年"];
        foreach (string a in texts)
            foreach (string b in texts)
            {
                double score = AnswerSimilarity.Score(a, b);
                Assert.InRange(score, 0.0, 1.0);
                Assert.Equal(score, AnswerSimilarity.Score(b, a), 12);
            }
    }

    [Theory]
    [InlineData("Yes.", "yes.", false)]
    [InlineData("一年保固", "一年保固 ", false)]
    [InlineData("一年保固", "一年保固。", true)]
    [InlineData("yes", "no", true)]
    public void Answers_differ_when_their_normalized_texts_do(string first, string second, bool differ)
    {
        Assert.Equal(differ, AnswerSimilarity.Differ(first, second));
    }
}
