using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace FineTune.Engine.Data;

/// <summary>
/// One tokenized row. <see cref="Targets"/> is already shifted: Targets[t] is the token the model must
/// predict after reading InputIds[0..t], or -100 where no loss is taken (prompt tokens, the last position).
/// </summary>
public sealed record TrainingExample(int[] InputIds, int[] Targets, int SourceRow)
{
    public int Length => InputIds.Length;
    public int TargetCount => Targets.Count(t => t != TrainingExamples.IgnoreIndex);
}

/// <summary>How examples are built from rows.</summary>
/// <param name="MaxSeqLength">Rows longer than this (prompt + answer + EOS) are cut at the end and counted.</param>
/// <param name="AnswerOnlyLoss">True (default): loss only on the answer and EOS (labels -100 on the prompt); false: on the whole text.</param>
public sealed record ExampleOptions(int MaxSeqLength = 1024, bool AnswerOnlyLoss = true);

/// <summary>The examples built from a data file, with what had to be cut or dropped.</summary>
public sealed record ExampleSet(IReadOnlyList<TrainingExample> Examples, int TruncatedCount, IReadOnlyList<int> DroppedSourceRows)
{
    public long TokenCount => Examples.Sum(e => (long)e.Length);
}

public static class TrainingExamples
{
    /// <summary>PyTorch cross-entropy's ignore_index: positions with this label add no loss.</summary>
    public const int IgnoreIndex = -100;

    /// <summary>
    /// Examples through the prompt template shared with inference (FineTune.Engine.Tokenization): the model's
    /// chat template, the tutorial's "### 指令：/### 回應：" layout or a custom one; EOS ends each answer.
    /// </summary>
    public static ExampleSet Build(IEnumerable<QaRow> rows, Tokenization.PromptTemplate template, ExampleOptions options, ILogger? logger = null) =>
        Build(rows, row =>
        {
            var encoded = template.Encode(row);
            return (encoded.InputIds, encoded.Labels);
        }, options, logger);

    /// <summary>
    /// Conversations through the model's chat template, the loss on the assistant turns only
    /// (<see cref="Tokenization.PromptTemplate.EncodeConversation"/>); a conversation can give several examples.
    /// </summary>
    public static ExampleSet Build(IEnumerable<Conversation> conversations, Tokenization.PromptTemplate template, ExampleOptions options, ILogger? logger = null) =>
        Build(conversations.SelectMany((conversation, i) =>
        {
            int row = conversation.SourceRow > 0 ? conversation.SourceRow : i + 1;
            try
            {
                return template.EncodeConversation(conversation.Messages).Select(e => (e.InputIds, e.Labels, row));
            }
            catch (Exception e) when (e is Tokenization.PromptTemplateException or Tokenization.Jinja.ChatTemplateException)
            {
                throw new Tokenization.PromptTemplateException($"The conversation from row {row}: {e.Message}");
            }
        }), options, logger);

    /// <summary>Rows through <paramref name="encode"/> (ids and labels of one row).</summary>
    public static ExampleSet Build(IEnumerable<QaRow> rows, Func<QaRow, (int[] InputIds, int[] Labels)> encode, ExampleOptions options, ILogger? logger = null) =>
        Build(rows.Select((row, i) =>
        {
            var (ids, labels) = encode(row);
            return (ids, labels, row.SourceRow > 0 ? row.SourceRow : i + 1);
        }), options, logger);

    /// <summary>
    /// Token ids and labels (-100 on the prompt: answer-only loss; with AnswerOnlyLoss false every token is a
    /// label), then shifted by one so Targets[t] = label[t+1] (what HF's causal-LM loss does inside the model).
    /// Rows longer than MaxSeqLength are truncated at the end, ids and labels alike (counted, with a warning); a row
    /// left with nothing to learn (its whole answer cut off) is dropped and named in the warning.
    /// </summary>
    public static ExampleSet Build(IEnumerable<(int[] InputIds, int[] Labels, int SourceRow)> encoded, ExampleOptions options, ILogger? logger = null)
    {
        if (options.MaxSeqLength < 2) throw new ArgumentOutOfRangeException(nameof(options), options.MaxSeqLength, "max_seq_length must be at least 2 tokens.");
        logger ??= NullLogger.Instance;
        var examples = new List<TrainingExample>();
        var dropped = new List<int>();
        int truncated = 0;
        foreach (var (ids, encodedLabels, sourceRow) in encoded)
        {
            var labels = options.AnswerOnlyLoss ? encodedLabels : ids;
            int length = ids.Length;
            if (length > options.MaxSeqLength)
            {
                truncated++;
                length = options.MaxSeqLength;
            }
            var inputIds = ids[..length];
            var targets = new int[length];
            for (int t = 0; t < length - 1; t++) targets[t] = labels[t + 1];
            if (length > 0) targets[length - 1] = IgnoreIndex;
            if (targets.All(t => t == IgnoreIndex))
            {
                dropped.Add(sourceRow);
                continue;
            }
            examples.Add(new TrainingExample(inputIds, targets, sourceRow));
        }
        if (truncated > 0)
            logger.LogWarning("{Count} row(s) were longer than max_seq_length {Max} tokens and were cut at the end; raise the maximum length to keep them whole.", truncated, options.MaxSeqLength);
        if (dropped.Count > 0)
            logger.LogWarning("{Count} row(s) had no answer tokens left after cutting and were left out (rows {Rows}).", dropped.Count, string.Join(", ", dropped));
        return new ExampleSet(examples, truncated, dropped);
    }
}
