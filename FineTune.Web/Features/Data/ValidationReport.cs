using FineTune.Engine.Data;

namespace FineTune.Web.Features.Data;

/// <summary>What the import found. Blocking kinds make a row unusable for training; the rest are warnings.</summary>
public enum IssueKind
{
    EmptyInstruction,
    EmptyOutput,
    Duplicate,
    TooLong,
    Formula,
    FormulaWithoutValue,
    MergedCells,
    BlankRowSkipped,
    RowAboveHeaderSkipped,
    NoHeaderFound,
    /// <summary>A JSONL line that is not valid JSON: left out.</summary>
    InvalidJsonLine,
    /// <summary>A JSONL line that is valid JSON but not an object: left out.</summary>
    NotAnObjectLine,
    /// <summary>Chat data: the "messages"/"conversations" value is not an array of turns.</summary>
    NotAConversation,
    /// <summary>Chat data: a turn with no text.</summary>
    EmptyTurn,
    /// <summary>Chat data: a role that is not system, user or assistant (or ShareGPT's human/gpt).</summary>
    UnknownRole,
    /// <summary>Chat data: the conversation does not end with the assistant's turn, the one the model learns to write.</summary>
    LastTurnNotAssistant,
    /// <summary>Chat data: the assistant speaks before any user turn.</summary>
    AssistantBeforeUser,
    /// <summary>Chat sheet: a row with no conversation id.</summary>
    NoConversationId,
    /// <summary>Chat data: the model's chat template refuses the conversation (its raise_exception; the message is in Cell).</summary>
    ChatTemplateRefused,
}

/// <summary>One finding. <see cref="Row"/> is the 1-based row in the file (0 for file-wide findings).</summary>
/// <param name="Cell">"B4" for Excel cells, a range "A3:A5" for merged cells, else null.</param>
/// <param name="OtherRow">For duplicates: the earlier row it repeats.</param>
/// <param name="Tokens">For rows too long: the token count.</param>
/// <param name="Turn">For chat data: the 1-based turn of the conversation (for an unknown role, <see cref="Cell"/> is the role as written).</param>
public sealed record ValidationIssue(IssueKind Kind, int Row, string? Cell = null, int? OtherRow = null, int? Tokens = null, int? Turn = null)
{
    public bool IsBlocking => Kind is IssueKind.EmptyInstruction or IssueKind.EmptyOutput or IssueKind.NotAConversation or IssueKind.EmptyTurn
        or IssueKind.UnknownRole or IssueKind.LastTurnNotAssistant or IssueKind.AssistantBeforeUser or IssueKind.NoConversationId
        or IssueKind.ChatTemplateRefused;
}

public sealed record ValidationReport(int DataRows, int UsableRows, IReadOnlyList<ValidationIssue> Issues)
{
    public int Count(IssueKind kind) => Issues.Count(i => i.Kind == kind);
    public IReadOnlyList<int> RowsWith(IssueKind kind) => Issues.Where(i => i.Kind == kind).Select(i => i.Row).Distinct().ToArray();
    public IEnumerable<IGrouping<IssueKind, ValidationIssue>> ByKind => Issues.GroupBy(i => i.Kind).OrderBy(g => g.Key);
}

/// <summary>A data row with the issues found on it.</summary>
public sealed record ImportedRow(QaRow Row, IReadOnlyList<ValidationIssue> Issues)
{
    public bool IsUsable => !Issues.Any(i => i.IsBlocking);
}
