using FineTune.Engine.Data;

namespace FineTune.Web.Features.Data;

/// <summary>
/// The imported rows as the user shapes them in the data step: rows can be excluded, and rows with
/// problems fixed in place. <see cref="FinalRows"/> is what training gets.
/// </summary>
public sealed class DatasetDraft(ImportResult import)
{
    private readonly HashSet<int> _excluded = [];
    private readonly Dictionary<int, QaRow> _edits = [];

    public ImportResult Import { get; } = import;

    public bool IsExcluded(int sourceRow) => _excluded.Contains(sourceRow);

    public void SetExcluded(int sourceRow, bool excluded)
    {
        if (excluded) _excluded.Add(sourceRow); else _excluded.Remove(sourceRow);
    }

    /// <summary>The row as it will be trained (with the user's fix, if any).</summary>
    public QaRow Current(ImportedRow row) => _edits.TryGetValue(row.Row.SourceRow, out var edit) ? edit : row.Row;

    public bool IsEdited(int sourceRow) => _edits.ContainsKey(sourceRow);

    /// <summary>Replaces a row's question and answer (trimmed). A fixed row with both filled becomes usable.</summary>
    public void Fix(int sourceRow, string instruction, string output)
    {
        var original = Import.Rows.FirstOrDefault(r => r.Row.SourceRow == sourceRow)
            ?? throw new ArgumentOutOfRangeException(nameof(sourceRow), sourceRow, "No imported row has this number.");
        _edits[sourceRow] = original.Row with { Instruction = instruction.Trim(), Output = output.Trim() };
    }

    /// <summary>True when the row has an empty question or answer after fixes.</summary>
    public bool IsBlocked(ImportedRow row)
    {
        var current = Current(row);
        return current.Instruction.Length == 0 || current.Output.Length == 0;
    }

    public IReadOnlyList<QaRow> FinalRows =>
        Import.Rows.Where(r => !_excluded.Contains(r.Row.SourceRow) && !IsBlocked(r)).Select(Current).ToArray();

    /// <summary>A chat dataset's conversations training gets: usable and not left out (by their first row or line).</summary>
    public IReadOnlyList<Conversation> FinalConversations =>
        Import.Conversations.Where(c => c.IsUsable && !_excluded.Contains(c.SourceRow)).Select(c => c.Conversation).ToArray();

    /// <summary>What training gets, as rows for size estimates (a conversation as <see cref="ChatDatasetReader.SizingRow"/>).</summary>
    public IReadOnlyList<QaRow> SizingRows => Import.Chat is null ? FinalRows : FinalConversations.Select(ChatDatasetReader.SizingRow).ToArray();

    /// <summary>How many rows or conversations training gets.</summary>
    public int FinalCount => Import.Chat is null ? FinalRows.Count : FinalConversations.Count;

    public int ExcludedCount => _excluded.Count;

    /// <summary>Rows the user left out (for the saved draft).</summary>
    public IReadOnlyCollection<int> ExcludedRows => _excluded;

    /// <summary>Rows the user fixed, by source row (for the saved draft).</summary>
    public IReadOnlyDictionary<int, QaRow> EditedRows => _edits;
}
