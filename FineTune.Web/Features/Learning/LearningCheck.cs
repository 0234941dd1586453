using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using FineTune.Web.Features.Chat;

namespace FineTune.Web.Features.Learning;

public enum LearningCheckStatus { Completed, Failed }

/// <summary>
/// "Did it learn?" for one finished run, as stored: the answers of the base model and of the fine-tuned model to a
/// sample of the run's training questions. The questions and expected answers are the run's dataset.jsonl
/// (<see cref="LearningCheckAnswer.RowIndex"/> into <see cref="LearningCheckSample.Questions"/>); the scores are computed
/// from the texts when shown (<see cref="LearningCheckReport"/>).
/// </summary>
public sealed class LearningCheck
{
    public int RunId { get; set; }
    public LearningCheckStatus Status { get; set; }
    public DateTime StartedAt { get; set; }
    public DateTime EndedAt { get; set; }
    /// <summary>Why it failed (the engine's message); null when completed.</summary>
    public string? Error { get; set; }
    public List<LearningCheckAnswer> Answers { get; set; } = [];
}

/// <summary>Both models' greedy answers to one training question.</summary>
public sealed class LearningCheckAnswer
{
    public long Id { get; set; }
    public int RunId { get; set; }
    /// <summary>0-based index of the question in the run's questions (<see cref="LearningCheckSample.Questions"/>).</summary>
    public int RowIndex { get; set; }
    public string BaseAnswer { get; set; } = string.Empty;
    public string FineTunedAnswer { get; set; } = string.Empty;
}

/// <summary>Which training questions are asked, and how each is asked.</summary>
public static class LearningCheckSample
{
    /// <summary>At most this many questions per run: all of a small set; of a bigger one, this many spread evenly.</summary>
    public const int MaxQuestions = 20;

    /// <summary>At most this many new tokens per answer (<see cref="MaxNewTokens"/>).</summary>
    public const int MaxAnswerTokens = 256;

    /// <summary>
    /// The 0-based rows asked: every row of a set of up to <see cref="MaxQuestions"/>; otherwise <see cref="MaxQuestions"/>
    /// rows evenly spread from the first (row i × count ÷ 20), the same rows every time.
    /// </summary>
    public static IReadOnlyList<int> Rows(int count) =>
        count <= MaxQuestions ? [.. Enumerable.Range(0, count)] : [.. Enumerable.Range(0, MaxQuestions).Select(i => (int)((long)i * count / MaxQuestions))];

    /// <summary>
    /// The answer's length limit: twice the expected answer's characters in tokens (room to say it, not to ramble on),
    /// at least 32 and at most <see cref="MaxAnswerTokens"/>.
    /// </summary>
    public static int MaxNewTokens(string expected) => Math.Clamp(2 * expected.Length, 32, MaxAnswerTokens);

    /// <summary>
    /// A run's training questions with their expected answers, in the data's order: each Q&amp;A row as trained (its
    /// system prompt, then the instruction with its input); each conversation's last answer after the turns before it
    /// (<see cref="BatchTest.FromConversations"/>).
    /// </summary>
    public static IReadOnlyList<BatchTestRow> Questions(IReadOnlyList<QaRow> rows, IReadOnlyList<Conversation> conversations) =>
        [.. rows.Select(Question), .. BatchTest.FromConversations(conversations)];

    private static BatchTestRow Question(QaRow row)
    {
        string user = string.IsNullOrWhiteSpace(row.Input) ? row.Instruction : row.Instruction + "\n\n" + row.Input;
        return new BatchTestRow(user, row.Output, string.IsNullOrWhiteSpace(row.System) ? null : [ChatMessage.System(row.System)]);
    }
}

/// <summary>How well a question (or the whole check) reproduces the expected answers.</summary>
public enum LearningVerdict { Learned, Partly, NotYet }

/// <summary>One question with both answers and their <see cref="AnswerSimilarity"/> to the expected answer.</summary>
public sealed record LearningCheckRow(int RowIndex, string Question, string Expected, string BaseAnswer, string FineTunedAnswer)
{
    public double BaseScore { get; } = AnswerSimilarity.Score(Expected, BaseAnswer);
    public double FineTunedScore { get; } = AnswerSimilarity.Score(Expected, FineTunedAnswer);
    /// <summary>The fine-tuned answer differs from the base model's (after <see cref="AnswerSimilarity.Normalize"/>).</summary>
    public bool Changed { get; } = AnswerSimilarity.Differ(BaseAnswer, FineTunedAnswer);
    public LearningVerdict Verdict => LearningCheckReport.VerdictOf(FineTunedScore);
}

/// <summary>The check's reading: per question and overall, out of the run's <paramref name="DatasetRows"/> questions.</summary>
public sealed record LearningCheckReport(IReadOnlyList<LearningCheckRow> Rows, int DatasetRows)
{
    /// <summary>Similarity from which an answer counts as learned (the expected answer nearly word for word).</summary>
    public const double LearnedFrom = 0.8;

    /// <summary>Similarity from which an answer counts as partly learned (much of the expected wording is there).</summary>
    public const double PartlyFrom = 0.5;

    public int ChangedCount => Rows.Count(r => r.Changed);
    public double BaseScore => Rows.Count == 0 ? 0 : Rows.Average(r => r.BaseScore);
    public double FineTunedScore => Rows.Count == 0 ? 0 : Rows.Average(r => r.FineTunedScore);
    /// <summary>Only some of the questions were asked (<see cref="LearningCheckSample.Rows"/>).</summary>
    public bool Sampled => Rows.Count < DatasetRows;

    /// <summary>
    /// Learned: the fine-tuned answers match on average at least <see cref="LearnedFrom"/>. Partly: at least
    /// <see cref="PartlyFrom"/>, or clearly closer than the base model (by 0.2). Otherwise not yet.
    /// </summary>
    public LearningVerdict Verdict => FineTunedScore >= LearnedFrom ? LearningVerdict.Learned
        : FineTunedScore >= PartlyFrom || FineTunedScore - BaseScore >= 0.2 ? LearningVerdict.Partly
        : LearningVerdict.NotYet;

    public static LearningVerdict VerdictOf(double score) =>
        score >= LearnedFrom ? LearningVerdict.Learned : score >= PartlyFrom ? LearningVerdict.Partly : LearningVerdict.NotYet;

    /// <summary>The stored answers joined with their questions (<see cref="LearningCheckSample.Questions"/>).</summary>
    public static LearningCheckReport From(IReadOnlyList<LearningCheckAnswer> answers, IReadOnlyList<BatchTestRow> questions) =>
        new([.. answers.OrderBy(a => a.RowIndex).Where(a => a.RowIndex < questions.Count).Select(a =>
            new LearningCheckRow(a.RowIndex, questions[a.RowIndex].Question, questions[a.RowIndex].Expected, a.BaseAnswer, a.FineTunedAnswer))],
            questions.Count);
}
