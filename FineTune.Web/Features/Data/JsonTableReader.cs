using System.Text.Json;

namespace FineTune.Web.Features.Data;

/// <summary>
/// Alpaca-style data: JSON Lines (one object per line) or a JSON array of objects with
/// instruction / input / output (and optional system). The keys become a synthetic header row
/// (number 0) so the same column guessing applies; data rows keep their line (JSONL) or item (JSON) number.
/// </summary>
public static class JsonTableReader
{
    /// <summary>
    /// One object per line. A line that is not a JSON object is left out and reported (<see cref="IssueKind.InvalidJsonLine"/>,
    /// <see cref="IssueKind.NotAnObjectLine"/>) so one broken line does not reject the file; only a file with no
    /// readable line at all is refused, at its first bad line.
    /// </summary>
    public static SheetTable ReadLines(string text, string name)
    {
        using var reader = new StringReader(text);
        return ReadLines(reader, name);
    }

    /// <summary>As <see cref="ReadLines(string, string)"/>, a line at a time from <paramref name="reader"/> (an upload is never one string).</summary>
    public static SheetTable ReadLines(TextReader reader, string name)
    {
        var objects = new List<(int Number, JsonElement Value)>();
        var skipped = new List<ValidationIssue>();
        DataImportException? first = null;
        int number = 0;
        for (string? read; (read = reader.ReadLine()) is not null;)
        {
            number++;
            string line = read.Trim();
            if (line.Length == 0) continue;
            try
            {
                using var document = JsonDocument.Parse(line);
                if (document.RootElement.ValueKind == JsonValueKind.Object)
                {
                    objects.Add((number, document.RootElement.Clone()));
                    continue;
                }
                skipped.Add(new ValidationIssue(IssueKind.NotAnObjectLine, number));
                first ??= NotAnObject(document.RootElement.ValueKind, $"line {number}");
            }
            catch (JsonException e)
            {
                skipped.Add(new ValidationIssue(IssueKind.InvalidJsonLine, number));
                first ??= new DataImportException(ImportErrorCode.InvalidJson, ParserMessage(e), $"line {number}", e);
            }
        }
        if (objects.Count == 0 && first is not null) throw first;
        return Build(objects, name, "line") with { ReadIssues = skipped };
    }

    /// <summary>The parser's message without its own position suffix (which counts lines from 0 within the one line parsed), plus the column.</summary>
    private static string ParserMessage(JsonException e)
    {
        string message = e.Message;
        int position = message.IndexOf(" LineNumber:", StringComparison.Ordinal);
        if (position > 0) message = message[..position].TrimEnd();
        return e.BytePositionInLine is { } column ? $"{message} (column {column + 1})" : message;
    }

    private static DataImportException NotAnObject(JsonValueKind kind, string location) =>
        new(ImportErrorCode.UnexpectedJsonShape, $"Expected an object like {{\"instruction\": ..., \"output\": ...}}, found a {kind}.", location);

    public static SheetTable ReadArray(string text, string name)
    {
        JsonElement root;
        try
        {
            using var document = JsonDocument.Parse(text, new JsonDocumentOptions { AllowTrailingCommas = true, CommentHandling = JsonCommentHandling.Skip });
            root = document.RootElement.Clone();
        }
        catch (JsonException e)
        {
            throw new DataImportException(ImportErrorCode.InvalidJson, ParserMessage(e), e.LineNumber is { } l ? $"line {l + 1}" : null, e);
        }
        if (root.ValueKind == JsonValueKind.Object && root.TryGetProperty("data", out var data) && data.ValueKind == JsonValueKind.Array)
            root = data;
        if (root.ValueKind != JsonValueKind.Array)
            throw new DataImportException(ImportErrorCode.UnexpectedJsonShape,
                $"Expected a JSON array of objects like {{\"instruction\": ..., \"output\": ...}}, found a {root.ValueKind}.");
        return Build(root.EnumerateArray().Select((e, i) => (i + 1, e)).ToList(), name, "item");
    }

    private static SheetTable Build(List<(int Number, JsonElement Value)> objects, string name, string unit)
    {
        var keys = new List<string>();
        foreach (var (number, value) in objects)
        {
            if (value.ValueKind != JsonValueKind.Object)
                throw NotAnObject(value.ValueKind, $"{unit} {number}");
            foreach (var property in value.EnumerateObject())
                if (!keys.Contains(property.Name)) keys.Add(property.Name);
        }

        var rows = new List<TableRow> { new(0, keys.Select(k => new TableCell(k)).ToArray()) };
        foreach (var (number, value) in objects)
        {
            var cells = keys.Select(k => value.TryGetProperty(k, out var v) ? new TableCell(Text(v)) : TableCell.Empty).ToArray();
            rows.Add(new TableRow(number, cells));
        }
        return new SheetTable(name, rows, []);
    }

    private static string Text(JsonElement value) => value.ValueKind switch
    {
        JsonValueKind.String => value.GetString()!.Replace("\r\n", "\n", StringComparison.Ordinal),
        JsonValueKind.Null or JsonValueKind.Undefined => string.Empty,
        _ => value.GetRawText(),
    };
}
