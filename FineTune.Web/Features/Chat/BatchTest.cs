using ClosedXML.Excel;
using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;

namespace FineTune.Web.Features.Chat;

/// <summary>
/// One question asked to both models, with the answer the data expected. For a conversation, <see cref="History"/>
/// holds the turns before the question (system and earlier exchanges), given to both models as written in the data.
/// </summary>
public sealed class BatchTestRow(string question, string expected, IReadOnlyList<ChatMessage>? history = null)
{
    public string Question { get; } = question;
    public string Expected { get; } = expected;
    public IReadOnlyList<ChatMessage> History { get; } = history ?? [];
    public string BaseAnswer { get; set; } = string.Empty;
    public string FineTunedAnswer { get; set; } = string.Empty;

    /// <summary>What a model is given: the history, then the question.</summary>
    public IReadOnlyList<ChatMessage> Messages => [.. History, ChatMessage.User(Question)];

    /// <summary>The earlier exchanges (not the system prompt), for the table and the sheet; empty for a single question.</summary>
    public IReadOnlyList<ChatMessage> EarlierTurns => History.Where(m => m.Role != "system").ToList();
}

/// <summary>The questions of a batch test, from the run's data, and the run that asks them.</summary>
public static class BatchTest
{
    /// <summary>Q&amp;A rows: each question with its expected answer.</summary>
    public static IEnumerable<BatchTestRow> FromRows(IEnumerable<QaRow> rows) => rows.Select(r => new BatchTestRow(r.Instruction, r.Output));

    /// <summary>
    /// Conversations: each one's last assistant turn is the expected answer, generated from everything before it (the
    /// system prompt and the earlier turns as written in the data). A conversation whose last assistant turn does not
    /// follow a user message has nothing to ask and is left out.
    /// </summary>
    public static IEnumerable<BatchTestRow> FromConversations(IEnumerable<Conversation> conversations)
    {
        foreach (var conversation in conversations)
        {
            var messages = conversation.Messages;
            int answer = LastIndex(messages, messages.Count, "assistant");
            if (answer < 1 || messages[answer - 1].Role != "user") continue;
            yield return new BatchTestRow(messages[answer - 1].Content, messages[answer].Content, [.. messages.Take(answer - 1)]);
        }
    }

    /// <summary>Asks every row to the fine-tuned model, then the base model, each with the row's history; <paramref name="changed"/> after each piece.</summary>
    public static async Task RunAsync(
        IReadOnlyList<BatchTestRow> rows, IChatGenerator generator, Func<IReadOnlyList<ChatMessage>, bool, ChatRequest> request,
        Func<Task> changed, CancellationToken cancellationToken)
    {
        foreach (var row in rows)
        {
            await foreach (var piece in generator.StreamAsync(request(row.Messages, true), cancellationToken))
            {
                row.FineTunedAnswer += piece.Text;
                await changed();
            }
            await foreach (var piece in generator.StreamAsync(request(row.Messages, false), cancellationToken))
            {
                row.BaseAnswer += piece.Text;
                await changed();
            }
        }
    }

    /// <summary>Earlier turns as text for a cell: one "role: content" line per turn.</summary>
    public static string Transcript(IEnumerable<ChatMessage> turns, string userLabel, string assistantLabel) =>
        string.Join("\n", turns.Select(t => $"{(t.Role == "user" ? userLabel : t.Role == "assistant" ? assistantLabel : t.Role)}: {t.Content}"));

    private static int LastIndex(IReadOnlyList<ChatMessage> messages, int before, string role)
    {
        for (int i = before - 1; i >= 0; i--)
            if (messages[i].Role == role) return i;
        return -1;
    }
}

public static class BatchTestExport
{
    public const string ContentType = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

    /// <summary>
    /// An .xlsx with the columns question, expected, base, fine-tuned, and a fifth, the earlier turns, when a row is part
    /// of a conversation. <paramref name="headers"/>: the five localized column titles; <paramref name="transcript"/>
    /// writes a row's earlier turns.
    /// </summary>
    public static byte[] ToExcel(IReadOnlyList<BatchTestRow> rows, IReadOnlyList<string> headers, Func<BatchTestRow, string>? transcript = null)
    {
        if (headers.Count != 5)
            throw new ArgumentException($"Expected 5 headers (question, expected, base, fine-tuned, earlier turns), got {headers.Count}.", nameof(headers));
        int columns = rows.Any(r => r.EarlierTurns.Count > 0) ? 5 : 4;
        using var workbook = new XLWorkbook();
        var sheet = workbook.AddWorksheet("Test");
        for (int c = 0; c < columns; c++)
        {
            sheet.Cell(1, c + 1).SetValue(headers[c]);
            sheet.Column(c + 1).Width = c == 0 ? 36 : 60; // fixed widths: AdjustToContents needs System.Drawing
        }
        sheet.Row(1).Style.Font.Bold = true;
        int r = 2;
        foreach (var row in rows)
        {
            sheet.Cell(r, 1).SetValue(row.Question);
            sheet.Cell(r, 2).SetValue(row.Expected);
            sheet.Cell(r, 3).SetValue(row.BaseAnswer);
            sheet.Cell(r, 4).SetValue(row.FineTunedAnswer);
            if (columns == 5) sheet.Cell(r, 5).SetValue(transcript?.Invoke(row) ?? BatchTest.Transcript(row.EarlierTurns, "user", "assistant"));
            r++;
        }
        sheet.Columns(1, columns).Style.Alignment.WrapText = true;
        sheet.Columns(1, columns).Style.Alignment.Vertical = XLAlignmentVerticalValues.Top;
        sheet.SheetView.FreezeRows(1);
        using var stream = new MemoryStream();
        workbook.SaveAs(stream);
        return stream.ToArray();
    }
}
