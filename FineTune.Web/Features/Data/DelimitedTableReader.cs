using System.Text;

namespace FineTune.Web.Features.Data;

/// <summary>
/// RFC 4180 CSV/TSV: quoted fields may hold the delimiter, doubled quotes and line breaks (the tutorial's
/// multi-line answers). Row numbers are the line on which each record starts, as a text editor shows it.
/// </summary>
public static class DelimitedTableReader
{
    /// <summary>Reads a whole text; the delimiter is guessed from its first line unless given.</summary>
    public static SheetTable Read(string text, string name, char? delimiter = null)
    {
        using var reader = new StringReader(text);
        return Read(reader, name, delimiter ?? GuessDelimiter(text));
    }

    /// <summary>
    /// Reads records as the text comes from <paramref name="reader"/> (an upload is decoded while it is parsed, never held
    /// as one string); <paramref name="delimiter"/> as <see cref="GuessDelimiter"/> finds it on the text's start.
    /// </summary>
    public static SheetTable Read(TextReader reader, string name, char delimiter)
    {
        var text = new CharSource(reader);
        var rows = new List<TableRow>();
        var fields = new List<TableCell>();
        var field = new StringBuilder();
        int line = 1, recordStartLine = 1, quoteStartLine = 0;
        bool inQuotes = false, fieldWasQuoted = false;

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

        while (text.Next() is var next and >= 0)
        {
            char c = (char)next;
            if (inQuotes)
            {
                if (c == '"')
                {
                    if (text.Peek() == '"') { text.Next(); field.Append('"'); continue; }
                    inQuotes = false; continue;
                }
                if (c == '\r')
                {
                    // Keep line breaks inside a cell as \n whatever the file used.
                    if (text.Peek() == '\n') text.Next();
                    field.Append('\n'); line++; continue;
                }
                if (c == '\n') { field.Append('\n'); line++; continue; }
                field.Append(c); continue;
            }

            if (c == '"' && IsBlank(field))
            {
                field.Clear();
                inQuotes = true; fieldWasQuoted = true; quoteStartLine = line; continue;
            }
            if (c == delimiter) { EndField(); continue; }
            if (c == '\r' || c == '\n')
            {
                if (c == '\r' && text.Peek() == '\n') text.Next();
                EndRecord();
                line++; recordStartLine = line;
                continue;
            }
            field.Append(c);
        }

        if (inQuotes)
            throw new DataImportException(ImportErrorCode.UnclosedQuote,
                "A quoted field is never closed: a \" is missing.", $"line {quoteStartLine}");
        if (field.Length > 0 || fields.Count > 0 || fieldWasQuoted)
            EndRecord();

        return new SheetTable(name, rows, []);
    }

    private static bool IsBlank(StringBuilder field)
    {
        foreach (var chunk in field.GetChunks())
            if (!chunk.Span.IsWhiteSpace()) return false;
        return true;
    }

    /// <summary>Characters of a reader, a block at a time, with one character of look-ahead.</summary>
    private sealed class CharSource(TextReader reader)
    {
        private readonly char[] _buffer = new char[1 << 14];
        private int _position, _length;

        /// <summary>The next character, or -1 at the end.</summary>
        public int Next() => _position < _length || Fill() ? _buffer[_position++] : -1;

        public int Peek() => _position < _length || Fill() ? _buffer[_position] : -1;

        private bool Fill()
        {
            _length = reader.Read(_buffer, 0, _buffer.Length);
            _position = 0;
            return _length > 0;
        }
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
