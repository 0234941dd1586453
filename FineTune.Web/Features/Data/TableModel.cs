namespace FineTune.Web.Features.Data;

/// <summary>One cell as read from a file: the text shown to the user, and whether Excel computed it from a formula.</summary>
public readonly record struct TableCell(string Text, bool IsFormula = false, bool FormulaHasNoCachedValue = false)
{
    public static readonly TableCell Empty = new(string.Empty);
    public bool IsBlank => string.IsNullOrWhiteSpace(Text);
}

/// <summary>One row with its 1-based number in the original file (Excel row, CSV record start line, JSONL line).</summary>
public sealed record TableRow(int Number, IReadOnlyList<TableCell> Cells)
{
    public TableCell this[int column] => column >= 0 && column < Cells.Count ? Cells[column] : TableCell.Empty;
    public bool IsBlank => Cells.All(c => c.IsBlank);
}

/// <summary>A sheet (or the single table of a CSV/JSONL file) before columns are chosen.</summary>
/// <param name="Name">Sheet name; the file name for CSV/JSONL.</param>
/// <param name="Rows">Every row in file order, blank ones included, so row numbers stay true.</param>
/// <param name="MergedRanges">Excel merged ranges such as "A3:A5".</param>
public sealed record SheetTable(string Name, IReadOnlyList<TableRow> Rows, IReadOnlyList<string> MergedRanges)
{
    /// <summary>What the reader left out and why (JSONL lines that are not JSON objects); reported with the rows' issues.</summary>
    public IReadOnlyList<ValidationIssue> ReadIssues { get; init; } = [];

    public int ColumnCount => Rows.Count == 0 ? 0 : Rows.Max(r => r.Cells.Count);
}

public enum DataFileFormat { Excel, Csv, Tsv, JsonLines, Json }

/// <summary>A file read into tables, before a sheet and columns are chosen.</summary>
/// <param name="FileName">The name the user uploaded.</param>
/// <param name="Format">How it was read.</param>
/// <param name="Sheets">One table per sheet (one for text formats).</param>
/// <param name="Encoding">For text formats: the encoding read with (detected, or chosen by the user).</param>
/// <param name="UsedFallbackReader">True when ClosedXML could not open the workbook and cell values were read with the OpenXml SDK.</param>
public sealed record DataFile(
    string FileName,
    DataFileFormat Format,
    IReadOnlyList<SheetTable> Sheets,
    TextEncoding? Encoding = null,
    bool UsedFallbackReader = false)
{
    /// <summary>"UTF-8", "Big5", "GB18030 / GBK", ... for text formats; null for workbooks.</summary>
    public string? EncodingName => Encoding?.DisplayName();
}
