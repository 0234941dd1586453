using System.Text.Json;
using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;

namespace FineTune.Web.Features.Data;

/// <summary>How a chat dataset is laid out in its table.</summary>
public enum ChatLayout
{
    /// <summary>OpenAI fine-tuning format: a "messages" array of {role, content} per JSON object.</summary>
    OpenAiMessages,
    /// <summary>ShareGPT: a "conversations" array of {from, value} (human/gpt/system) per JSON object.</summary>
    ShareGpt,
    /// <summary>A sheet with a conversation-id column, a role column and a content column: one turn per row, in row order.</summary>
    ConversationIdSheet,
}

/// <summary>Where a chat dataset's data is: the JSON column, or the sheet's header row and id/role/content columns.</summary>
public sealed record ChatColumns(ChatLayout Layout, int HeaderRowIndex, int Column, int RoleColumn = -1, int ContentColumn = -1);

/// <summary>One conversation as imported, with what the checks found on it (any blocking issue leaves it out of training).</summary>
public sealed record ImportedConversation(Conversation Conversation, IReadOnlyList<ValidationIssue> Issues)
{
    public bool IsUsable => !Issues.Any(i => i.IsBlocking);
    public int SourceRow => Conversation.SourceRow;
}

/// <summary>
/// Chat datasets, as people have them: OpenAI "messages" and ShareGPT "conversations" records in JSON/JSONL (read into a
/// table by <see cref="JsonTableReader"/>, the array kept as its JSON text), and sheets (xlsx/csv) with a conversation id,
/// a role and a content column. Each becomes a <see cref="Conversation"/> of system/user/assistant turns; a conversation with
/// an empty turn, an unknown role, or a last turn that is not the assistant's is reported on its row and left out.
/// </summary>
public static class ChatDatasetReader
{
    private static readonly string[] IdNames = ["conversationid", "conversation", "convid", "conversationindex", "dialogid", "dialogueid", "dialog", "dialogue", "chatid", "sessionid", "session", "threadid", "對話編號", "對話id", "對話", "会话id", "會話", "会话", "对话编号", "对话"];
    private static readonly string[] RoleNames = ["role", "from", "speaker", "author", "角色", "發言者", "发言者", "說話者"];
    private static readonly string[] ContentNames = ["content", "value", "text", "message", "utterance", "內容", "内容", "訊息", "消息", "文字", "發言"];

    /// <summary>The chat layout of a table, or null when it holds question–answer rows.</summary>
    public static ChatColumns? Detect(SheetTable sheet, DataFileFormat format)
    {
        if (format is DataFileFormat.Json or DataFileFormat.JsonLines && sheet.Rows.Count > 0 && sheet.Rows[0].Number == 0)
        {
            var keys = sheet.Rows[0].Cells.Select(c => c.Text).ToList();
            if (keys.IndexOf("messages") is var m and >= 0) return new ChatColumns(ChatLayout.OpenAiMessages, 0, m);
            if (keys.IndexOf("conversations") is var c and >= 0) return new ChatColumns(ChatLayout.ShareGpt, 0, c);
            return null;
        }
        int seen = 0;
        for (int i = 0; i < sheet.Rows.Count && seen < ColumnGuesser.HeaderSearchRows; i++)
        {
            if (sheet.Rows[i].IsBlank) continue;
            seen++;
            var names = sheet.Rows[i].Cells.Select(cell => ColumnGuesser.Normalize(cell.Text)).ToArray();
            int id = Array.FindIndex(names, n => IdNames.Contains(n));
            int role = Array.FindIndex(names, n => RoleNames.Contains(n));
            int content = Array.FindIndex(names, n => ContentNames.Contains(n));
            if (id >= 0 && role >= 0 && content >= 0) return new ChatColumns(ChatLayout.ConversationIdSheet, i, id, role, content);
        }
        return null;
    }

    /// <summary>The role a dataset's name stands for ("human" → user, "gpt" → assistant, 助理 → assistant), or null when unknown.</summary>
    public static string? Role(string name) => name.Trim().ToLowerInvariant() switch
    {
        "system" or "系統" or "系统" => "system",
        "user" or "human" or "使用者" or "用戶" or "用户" or "客戶" or "客户" or "提問者" => "user",
        "assistant" or "gpt" or "model" or "bot" or "助理" or "助手" or "客服" or "ai" => "assistant",
        _ => null,
    };

    public static IReadOnlyList<ImportedConversation> Read(SheetTable sheet, ChatColumns columns) =>
        columns.Layout == ChatLayout.ConversationIdSheet ? ReadSheet(sheet, columns) : ReadJson(sheet, columns);

    private static List<ImportedConversation> ReadJson(SheetTable sheet, ChatColumns columns)
    {
        bool shareGpt = columns.Layout == ChatLayout.ShareGpt;
        var conversations = new List<ImportedConversation>();
        foreach (var row in sheet.Rows.Skip(columns.HeaderRowIndex + 1))
        {
            if (row.IsBlank) continue;
            var turns = new List<(string? Role, string Name, string Content)>();
            var issues = new List<ValidationIssue>();
            try
            {
                using var document = JsonDocument.Parse(row[columns.Column].Text is { Length: > 0 } json ? json : "null");
                if (document.RootElement.ValueKind != JsonValueKind.Array)
                    issues.Add(new ValidationIssue(IssueKind.NotAConversation, row.Number));
                else
                    foreach (var turn in document.RootElement.EnumerateArray())
                    {
                        string name = Field(turn, shareGpt ? "from" : "role") ?? Field(turn, shareGpt ? "role" : "from") ?? "";
                        string content = Field(turn, shareGpt ? "value" : "content") ?? Field(turn, shareGpt ? "content" : "value") ?? "";
                        turns.Add((Role(name), name, content));
                    }
            }
            catch (JsonException)
            {
                issues.Add(new ValidationIssue(IssueKind.NotAConversation, row.Number));
            }
            conversations.Add(Check(turns, [.. Enumerable.Repeat(row.Number, turns.Count)], row.Number, issues));
        }
        return conversations;
    }

    /// <summary>Rows grouped by conversation id, in the order each id first appears; turns in row order.</summary>
    private static List<ImportedConversation> ReadSheet(SheetTable sheet, ChatColumns columns)
    {
        var groups = new Dictionary<string, List<TableRow>>(StringComparer.Ordinal);
        var order = new List<string>();
        var conversations = new List<ImportedConversation>();
        foreach (var row in sheet.Rows.Skip(columns.HeaderRowIndex + 1))
        {
            if (row.IsBlank) continue;
            string id = row[columns.Column].Text.Trim();
            if (!groups.TryGetValue(id, out var rows))
            {
                groups[id] = rows = [];
                order.Add(id);
            }
            rows.Add(row);
        }
        foreach (string id in order)
        {
            var rows = groups[id];
            var issues = new List<ValidationIssue>();
            if (id.Length == 0) issues.AddRange(rows.Select(r => new ValidationIssue(IssueKind.NoConversationId, r.Number)));
            var turns = rows.Select(r => (Role(r[columns.RoleColumn].Text), r[columns.RoleColumn].Text.Trim(), r[columns.ContentColumn].Text)).ToList();
            conversations.Add(Check(turns, rows.Select(r => r.Number).ToArray(), rows[0].Number, issues));
        }
        return conversations;
    }

    /// <summary>The blocking checks: every turn known and non-empty, the last one the assistant's.</summary>
    private static ImportedConversation Check(List<(string? Role, string Name, string Content)> turns, int[] rowOfTurn, int sourceRow, List<ValidationIssue> issues)
    {
        for (int t = 0; t < turns.Count; t++)
        {
            if (turns[t].Role is null) issues.Add(new ValidationIssue(IssueKind.UnknownRole, rowOfTurn[t], Cell: turns[t].Name, Turn: t + 1));
            else if (string.IsNullOrWhiteSpace(turns[t].Content)) issues.Add(new ValidationIssue(IssueKind.EmptyTurn, rowOfTurn[t], Turn: t + 1));
        }
        bool readable = !issues.Any(i => i.Kind == IssueKind.NotAConversation);
        if (readable && (turns.Count == 0 || turns[^1].Role is { } last && last != "assistant")) // an unknown last role is reported as such
            issues.Add(new ValidationIssue(IssueKind.LastTurnNotAssistant, turns.Count == 0 ? sourceRow : rowOfTurn[^1], Turn: turns.Count));
        else if (readable && turns.FindIndex(t => t.Role != "system") is var first and >= 0 && turns[first].Role == "assistant")
            issues.Add(new ValidationIssue(IssueKind.AssistantBeforeUser, rowOfTurn[first], Turn: first + 1));
        var messages = turns.Select(t => new ChatMessage(t.Role ?? t.Name, t.Content.Trim())).ToList();
        return new ImportedConversation(new Conversation(messages, sourceRow), issues);
    }

    /// <summary>
    /// A conversation as one question–answer row for size estimates only (token counts, steps, memory): the system and user
    /// turns as the question, the assistant turns as the answer. Training renders the turns with the chat template.
    /// </summary>
    public static QaRow SizingRow(Conversation conversation) => new(
        string.Join("\n", conversation.Messages.Where(m => m.Role != "assistant").Select(m => m.Content)),
        string.Join("\n", conversation.Messages.Where(m => m.Role == "assistant").Select(m => m.Content)),
        SourceRow: conversation.SourceRow);

    private static string? Field(JsonElement turn, string name) =>
        turn.ValueKind == JsonValueKind.Object && turn.TryGetProperty(name, out var value)
            ? value.ValueKind == JsonValueKind.String ? value.GetString()!.Replace("\r\n", "\n", StringComparison.Ordinal)
              : value.ValueKind is JsonValueKind.Null or JsonValueKind.Undefined ? null : value.GetRawText()
            : null;
}
