using System.Text.Json;

namespace FineTune.Web.Features.Data;

/// <summary>
/// Alpaca-style data: JSON Lines (one object per line) or a JSON array of objects with
/// instruction / input / output (and optional system). The keys become a synthetic header row
/// (number 0) so the same column guessing applies; data rows keep their line (JSONL) or item (JSON) number.
/// </summary>
public static class JsonTableReader
{
    public static SheetTable ReadLines(string text, string name)
    {
        var objects = new List<(int Number, JsonElement Value)>();
        string[] lines = text.Split('\n');
        for (int i = 0; i < lines.Length; i++)
        {
            string line = lines[i].Trim();
            if (line.Length == 0) continue;
            try
            {
                using var document = JsonDocument.Parse(line);
                objects.Add((i + 1, document.RootElement.Clone()));
            }
            catch (JsonException e)
            {
                throw new DataImportException(ImportErrorCode.InvalidJson, e.Message, $"line {i + 1}", e);
            }
        }
        return Build(objects, name, "line");
    }

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
            throw new DataImportException(ImportErrorCode.InvalidJson, e.Message, e.LineNumber is { } l ? $"line {l + 1}" : null, e);
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
                throw new DataImportException(ImportErrorCode.UnexpectedJsonShape,
                    $"Expected an object like {{\"instruction\": ..., \"output\": ...}}, found a {value.ValueKind}.", $"{unit} {number}");
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
