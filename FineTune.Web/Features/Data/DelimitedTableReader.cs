using System.Text;

namespace FineTune.Web.Features.Data;

/// <summary>
/// RFC 4180 CSV/TSV: quoted fields may hold the delimiter, doubled quotes and line breaks (the tutorial's
/// multi-line answers). Row numbers are the line on which each record starts, as a text editor shows it.
/// </summary>
public static class DelimitedTableReader
{
    public static SheetTable Read(string text, string name, char? delimiter = null)
    {
        char sep = delimiter ?? GuessDelimiter(text);
        var rows = new List<TableRow>();
        var fields = new List<TableCell>();
        var field = new StringBuilder();
        int line = 1, recordStartLine = 1, quoteStartLine = 0;
        bool inQuotes = false, fieldWasQuoted = false;
        int i = 0;

        void EndField()
        {
            string value = fieldWasQuoted ? field.ToString() : field.ToString().Trim();
            fields.Add(new TableCell(value));
            field.Clear();
            fieldWasQuoted = false;
        }

        void EndRecord()
        {
            EndField();
            rows.Add(new TableRow(recordStartLine, fields.ToArray()));
            fields.Clear();
        }

        while (i < text.Length)
        {
            char c = text[i];
            if (inQuotes)
            {
                if (c == '"')
                {
                    if (i + 1 < text.Length && text[i + 1] == '"') { field.Append('"'); i += 2; continue; }
                    inQuotes = false; i++; continue;
                }
                if (c == '\r')
                {
                    // Keep line breaks inside a cell as \n whatever the file used.
                    if (i + 1 < text.Length && text[i + 1] == '\n') i++;
                    field.Append('\n'); line++; i++; continue;
                }
                if (c == '\n') { field.Append('\n'); line++; i++; continue; }
                field.Append(c); i++; continue;
            }

            if (c == '"' && field.ToString().Trim().Length == 0)
            {
                field.Clear();
                inQuotes = true; fieldWasQuoted = true; quoteStartLine = line; i++; continue;
            }
            if (c == sep) { EndField(); i++; continue; }
            if (c == '\r' || c == '\n')
            {
                if (c == '\r' && i + 1 < text.Length && text[i + 1] == '\n') i++;
                EndRecord();
                i++; line++; recordStartLine = line;
                continue;
            }
            field.Append(c); i++;
        }

        if (inQuotes)
            throw new DataImportException(ImportErrorCode.UnclosedQuote,
                "A quoted field is never closed: a \" is missing.", $"line {quoteStartLine}");
        if (field.Length > 0 || fields.Count > 0 || fieldWasQuoted)
            EndRecord();

        return new SheetTable(name, rows, []);
    }

    /// <summary>The most frequent of tab, comma and semicolon outside quotes on the first line.</summary>
    internal static char GuessDelimiter(string text)
    {
        int tabs = 0, commas = 0, semicolons = 0;
        bool inQuotes = false;
        foreach (char c in text)
        {
            if (c == '"') inQuotes = !inQuotes;
            else if (!inQuotes && (c == '\n' || c == '\r')) break;
            else if (!inQuotes && c == '\t') tabs++;
            else if (!inQuotes && c == ',') commas++;
            else if (!inQuotes && c == ';') semicolons++;
        }
        if (tabs >= commas && tabs >= semicolons && tabs > 0) return '\t';
        return semicolons > commas ? ';' : ',';
    }
}
