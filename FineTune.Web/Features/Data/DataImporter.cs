using System.Security.Cryptography;
using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using FineTune.Engine.Tokenization.Jinja;

namespace FineTune.Web.Features.Data;

/// <summary>What to take from a read file.</summary>
/// <param name="SheetIndex">Which sheet (0 for text formats).</param>
/// <param name="Mapping">Columns chosen by the user; null guesses them from the header.</param>
/// <param name="MaxSeqLength">Rows with more tokens than this are reported (they would be cut).</param>
/// <param name="CountTokens">Counts a row's tokens as the trainer will see them (prompt template included); null skips the check.</param>
public sealed record ImportSettings(int SheetIndex = 0, ColumnMapping? Mapping = null, int MaxSeqLength = 512, Func<QaRow, int>? CountTokens = null)
{
    /// <summary>
    /// For chat data: the tokens of a conversation's longest training example through the run's template; throws
    /// <see cref="ChatTemplateException"/> or <see cref="PromptTemplateException"/> when the
    /// model's template refuses the conversation. Null skips both checks.
    /// </summary>
    public Func<Conversation, int>? CountConversationTokens { get; init; }
}

/// <summary>The rows of one sheet with the columns used and what the checks found.</summary>
public sealed record ImportResult(
    DataFile File,
    int SheetIndex,
    ColumnMapping Mapping,
    IReadOnlyList<string> ColumnLabels,
    IReadOnlyList<ImportedRow> Rows,
    ValidationReport Report)
{
    public SheetTable Sheet => File.Sheets[SheetIndex];

    /// <summary>The rows training can use: blocking issues (empty question or answer) removed.</summary>
    public IReadOnlyList<QaRow> UsableRows => Rows.Where(r => r.IsUsable).Select(r => r.Row).ToArray();

    /// <summary>For a chat dataset: where its conversations are (then <see cref="Rows"/> is empty); null for question–answer rows.</summary>
    public ChatColumns? Chat { get; init; }

    /// <summary>A chat dataset's conversations with their issues (<see cref="ChatDatasetReader"/>).</summary>
    public IReadOnlyList<ImportedConversation> Conversations { get; init; } = [];

    /// <summary>The conversations training can use: those without blocking issues.</summary>
    public IReadOnlyList<Conversation> UsableConversations => Conversations.Where(c => c.IsUsable).Select(c => c.Conversation).ToArray();
}

/// <summary>
/// Reads uploaded Q&amp;A files (.xlsx, .csv, .tsv, .jsonl, .json) into <see cref="QaRow"/>s plus a validation report.
/// Every failure is a <see cref="DataImportException"/> that says what is wrong and where; nothing else escapes.
/// </summary>
public sealed class DataImporter(ExcelTableReader excel)
{
    public static readonly string[] Extensions = [".xlsx", ".csv", ".tsv", ".txt", ".jsonl", ".json"];

    /// <summary>Reads a whole upload (at most <paramref name="maxBytes"/>) and parses it.</summary>
    public async Task<DataFile> ReadAsync(Stream stream, string fileName, long maxBytes, CancellationToken cancellationToken = default) =>
        Parse(await ReadLimitedAsync(stream, maxBytes, cancellationToken: cancellationToken), fileName);

    /// <summary>
    /// The bytes of an upload, refusing more than <paramref name="maxBytes"/> while reading (the declared size may lie).
    /// With <paramref name="declaredBytes"/> (the browser's size) the bytes go straight into one array of that size: a
    /// growing MemoryStream and its final copy held about three times a 45 MB file at once, on the large object heap.
    /// </summary>
    public static async Task<byte[]> ReadLimitedAsync(Stream stream, long maxBytes, long? declaredBytes = null, CancellationToken cancellationToken = default)
    {
        if (declaredBytes is { } declared && declared > 0 && declared <= maxBytes)
        {
            var bytes = new byte[declared];
            int filled = 0, read;
            while (filled < bytes.Length && (read = await stream.ReadAsync(bytes.AsMemory(filled), cancellationToken)) > 0)
                filled += read;
            if (filled < bytes.Length) return bytes[..filled]; // shorter than declared: what came
            var extra = new byte[1];
            if (await stream.ReadAsync(extra, cancellationToken) == 0) return bytes;
            // Longer than declared: read on, with the limit, as for an unknown size.
            using var rest = new MemoryStream();
            rest.Write(bytes);
            rest.Write(extra);
            await CopyLimitedAsync(stream, rest, maxBytes, cancellationToken);
            return rest.ToArray();
        }
        using var buffer = new MemoryStream();
        await CopyLimitedAsync(stream, buffer, maxBytes, cancellationToken);
        return buffer.ToArray();
    }

    private static async Task CopyLimitedAsync(Stream stream, MemoryStream buffer, long maxBytes, CancellationToken cancellationToken)
    {
        if (buffer.Length > maxBytes) throw TooLarge(maxBytes);
        var chunk = new byte[81920];
        int read;
        while ((read = await stream.ReadAsync(chunk, cancellationToken)) > 0)
        {
            if (buffer.Length + read > maxBytes) throw TooLarge(maxBytes);
            buffer.Write(chunk, 0, read);
        }
    }

    private static DataImportException TooLarge(long maxBytes) =>
        new(ImportErrorCode.TooLarge, $"The file is larger than the limit of {maxBytes / (1024 * 1024)} MB.");

    /// <summary>Parses a file; <paramref name="encoding"/> overrides the detected text encoding (the user's choice).</summary>
    public DataFile Parse(byte[] bytes, string fileName, TextEncoding? encoding = null)
    {
        string extension = Path.GetExtension(fileName).ToLowerInvariant();
        if (!Extensions.Contains(extension))
            throw new DataImportException(ImportErrorCode.UnsupportedExtension,
                $"'{extension}' files are not supported. Use .xlsx, .csv, .tsv, .jsonl or .json.");
        if (bytes.Length == 0)
            throw new DataImportException(ImportErrorCode.EmptyFile, "The file is empty.");

        try
        {
            DataFile file;
            if (extension == ".xlsx")
            {
                var (sheets, fallback) = excel.Read(bytes, fileName);
                file = new DataFile(fileName, DataFileFormat.Excel, sheets, UsedFallbackReader: fallback);
            }
            else
            {
                // Text is decoded while it is parsed: the file is never also held as one string (twice its size in UTF-16).
                var used = encoding ?? TextDecoder.Detect(bytes);
                string name = Path.GetFileNameWithoutExtension(fileName);
                using var reader = TextDecoder.OpenReader(bytes, used);
                file = extension switch
                {
                    ".jsonl" => new DataFile(fileName, DataFileFormat.JsonLines, [JsonTableReader.ReadLines(reader, name)], used),
                    ".json" => new DataFile(fileName, DataFileFormat.Json, [JsonTableReader.ReadArray(reader.ReadToEnd(), name)], used),
                    ".tsv" => new DataFile(fileName, DataFileFormat.Tsv, [DelimitedTableReader.Read(reader, name, '\t')], used),
                    _ => new DataFile(fileName, DataFileFormat.Csv, [DelimitedTableReader.Read(reader, name, DelimitedTableReader.GuessDelimiter(TextDecoder.Start(bytes, used)))], used),
                };
            }
            if (file.Sheets.Count == 0 || file.Sheets.All(s => s.Rows.All(r => r.IsBlank)))
                throw new DataImportException(ImportErrorCode.EmptyFile, "The file holds no data.");
            return file;
        }
        catch (DataImportException)
        {
            throw;
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            // A reader bug must not take the page down: report it as an unreadable file.
            throw new DataImportException(ImportErrorCode.CorruptExcel, $"The file could not be read: {e.Message}", inner: e);
        }
    }

    /// <summary>The first sheet whose header is recognised, else the first sheet with data.</summary>
    public static int GuessSheet(DataFile file)
    {
        for (int i = 0; i < file.Sheets.Count; i++)
            if (ColumnGuesser.Guess(file.Sheets[i]).HeaderRowIndex >= 0) return i;
        for (int i = 0; i < file.Sheets.Count; i++)
            if (file.Sheets[i].Rows.Any(r => !r.IsBlank)) return i;
        return 0;
    }

    public ImportResult Build(DataFile file, ImportSettings settings)
    {
        int sheetIndex = Math.Clamp(settings.SheetIndex, 0, file.Sheets.Count - 1);
        var sheet = file.Sheets[sheetIndex];
        var mapping = settings.Mapping ?? ColumnGuesser.Guess(sheet);
        if (ChatDatasetReader.Detect(sheet, file.Format) is { } chat) return BuildChat(file, sheetIndex, mapping, chat, settings);
        bool excelCells = file.Format == DataFileFormat.Excel;
        var fileIssues = new List<ValidationIssue>();
        var rows = new List<ImportedRow>();
        var firstRowByKey = new Dictionary<string, int>(StringComparer.Ordinal);

        fileIssues.AddRange(sheet.ReadIssues);
        if (mapping.HeaderRowIndex < 0)
            fileIssues.Add(new ValidationIssue(IssueKind.NoHeaderFound, 0));
        foreach (string range in sheet.MergedRanges)
            fileIssues.Add(new ValidationIssue(IssueKind.MergedCells, RowOf(range), range));

        for (int i = 0; i < sheet.Rows.Count; i++)
        {
            var row = sheet.Rows[i];
            if (i < mapping.HeaderRowIndex)
            {
                if (!row.IsBlank) fileIssues.Add(new ValidationIssue(IssueKind.RowAboveHeaderSkipped, row.Number));
                continue;
            }
            if (i == mapping.HeaderRowIndex) continue;
            if (row.IsBlank)
            {
                fileIssues.Add(new ValidationIssue(IssueKind.BlankRowSkipped, row.Number));
                continue;
            }

            var issues = new List<ValidationIssue>();
            string Take(int? column)
            {
                if (column is not { } c) return string.Empty;
                var cell = row[c];
                string address = excelCells ? $"{ColumnGuesser.ColumnLetter(c)}{row.Number}" : ColumnGuesser.ColumnLetter(c);
                if (cell.FormulaHasNoCachedValue) issues.Add(new ValidationIssue(IssueKind.FormulaWithoutValue, row.Number, address));
                else if (cell.IsFormula) issues.Add(new ValidationIssue(IssueKind.Formula, row.Number, address));
                return cell.Text.Trim();
            }

            string instruction = Take(mapping.Instruction);
            string output = Take(mapping.Output);
            string input = Take(mapping.Input);
            string? system = mapping.System is null ? null : Take(mapping.System) is { Length: > 0 } s ? s : null;
            var qa = new QaRow(instruction, output, input, system, row.Number);

            if (instruction.Length == 0) issues.Add(new ValidationIssue(IssueKind.EmptyInstruction, row.Number));
            if (output.Length == 0) issues.Add(new ValidationIssue(IssueKind.EmptyOutput, row.Number));
            if (instruction.Length > 0)
            {
                string key = ColumnGuesser.Normalize(instruction) + "\u0001" + ColumnGuesser.Normalize(input);
                if (firstRowByKey.TryGetValue(key, out int first))
                    issues.Add(new ValidationIssue(IssueKind.Duplicate, row.Number, OtherRow: first));
                else
                    firstRowByKey[key] = row.Number;
            }
            if (settings.CountTokens is { } count && instruction.Length > 0 && output.Length > 0)
            {
                int tokens = count(qa);
                if (tokens > settings.MaxSeqLength) issues.Add(new ValidationIssue(IssueKind.TooLong, row.Number, Tokens: tokens));
            }
            rows.Add(new ImportedRow(qa, issues));
        }

        var header = mapping.HeaderRowIndex >= 0 ? sheet.Rows[mapping.HeaderRowIndex] : null;
        var labels = Enumerable.Range(0, sheet.ColumnCount)
            .Select(c => header is not null && !header[c].IsBlank ? $"{ColumnGuesser.ColumnLetter(c)}: {header[c].Text.Trim()}" : ColumnGuesser.ColumnLetter(c))
            .ToArray();
        var allIssues = fileIssues.Concat(rows.SelectMany(r => r.Issues)).OrderBy(i => i.Row).ThenBy(i => i.Kind).ToArray();
        var report = new ValidationReport(rows.Count, rows.Count(r => r.IsUsable), allIssues);
        return new ImportResult(file, sheetIndex, mapping, labels, rows, report);
    }

    /// <summary>A chat dataset: conversations instead of rows, with the reader's own findings (JSONL lines left out) first.</summary>
    private static ImportResult BuildChat(DataFile file, int sheetIndex, ColumnMapping mapping, ChatColumns chat, ImportSettings settings)
    {
        var sheet = file.Sheets[sheetIndex];
        var conversations = ChatDatasetReader.Read(sheet, chat);
        if (settings.CountConversationTokens is { } count)
            conversations = conversations.Select(c => c.IsUsable ? WithTemplateChecks(c, count, settings.MaxSeqLength) : c).ToList();
        var issues = sheet.ReadIssues.Concat(conversations.SelectMany(c => c.Issues)).OrderBy(i => i.Row).ThenBy(i => i.Kind).ToArray();
        var report = new ValidationReport(conversations.Count, conversations.Count(c => c.IsUsable), issues);
        return new ImportResult(file, sheetIndex, mapping, [], [], report) { Chat = chat, Conversations = conversations };
    }

    /// <summary>A conversation the model's template refuses is left out (and says why); one longer than the maximum is flagged.</summary>
    private static ImportedConversation WithTemplateChecks(ImportedConversation conversation, Func<Conversation, int> count, int maxSeqLength)
    {
        try
        {
            int tokens = count(conversation.Conversation);
            return tokens > maxSeqLength
                ? conversation with { Issues = [.. conversation.Issues, new ValidationIssue(IssueKind.TooLong, conversation.SourceRow, Tokens: tokens)] }
                : conversation;
        }
        catch (Exception e) when (e is ChatTemplateException or PromptTemplateException)
        {
            return conversation with { Issues = [.. conversation.Issues, new ValidationIssue(IssueKind.ChatTemplateRefused, conversation.SourceRow, Cell: e.Message)] };
        }
    }

    /// <summary>SHA-256 of the conversations as trained, like <see cref="Hash(IEnumerable{QaRow})"/>.</summary>
    public static string Hash(IEnumerable<Conversation> conversations)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var conversation in conversations)
        {
            foreach (var turn in conversation.Messages)
                sha.AppendData(System.Text.Encoding.UTF8.GetBytes($"{turn.Role}\u0001{turn.Content}\u0001"));
            sha.AppendData("\u0002"u8);
        }
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    /// <summary>SHA-256 of the rows as trained (not of the file bytes), so a re-saved file with the same content matches.</summary>
    public static string Hash(IEnumerable<QaRow> rows)
    {
        using var sha = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        foreach (var row in rows)
            sha.AppendData(System.Text.Encoding.UTF8.GetBytes($"{row.System}\u0001{row.Instruction}\u0001{row.Input}\u0001{row.Output}\u0002"));
        return Convert.ToHexStringLower(sha.GetHashAndReset());
    }

    private static int RowOf(string range)
    {
        var digits = new string(range.SkipWhile(ch => !char.IsAsciiDigit(ch)).TakeWhile(char.IsAsciiDigit).ToArray());
        return int.TryParse(digits, out int row) ? row : 0;
    }
}
