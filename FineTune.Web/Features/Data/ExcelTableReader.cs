using System.Globalization;
using ClosedXML.Excel;
using DocumentFormat.OpenXml.Packaging;
using DocumentFormat.OpenXml.Spreadsheet;

namespace FineTune.Web.Features.Data;

/// <summary>
/// Reads every sheet of an .xlsx. ClosedXML first (it knows number formats); when ClosedXML 0.95 throws on
/// load — it does for workbooks with pictures or charts, through System.Drawing — the cell values are read
/// directly with the OpenXml SDK, so such a workbook still imports. Formulas give their cached values.
/// </summary>
public sealed class ExcelTableReader(ILogger<ExcelTableReader> logger)
{
    public (IReadOnlyList<SheetTable> Sheets, bool UsedFallback) Read(byte[] bytes, string fileName)
    {
        if (bytes.Length >= 4 && bytes[0] == 0xD0 && bytes[1] == 0xCF && bytes[2] == 0x11 && bytes[3] == 0xE0)
            throw new DataImportException(ImportErrorCode.LegacyOrEncryptedExcel,
                "This is an old .xls workbook or a password-protected one. In Excel use Save As → Excel Workbook (.xlsx) without a password.");
        if (bytes.Length < 4 || bytes[0] != (byte)'P' || bytes[1] != (byte)'K')
            throw new DataImportException(ImportErrorCode.CorruptExcel,
                "The file is not an .xlsx workbook (an .xlsx is a zip package). Open it in Excel and save it as .xlsx.");

        try
        {
            return (ReadWithClosedXml(bytes), false);
        }
        catch (Exception e) when (e is not OutOfMemoryException)
        {
            logger.LogWarning(e, "ClosedXML could not open {File}; reading cell values with the OpenXml SDK instead", fileName);
        }

        try
        {
            return (ReadWithOpenXml(bytes), true);
        }
        catch (Exception e) when (e is not OutOfMemoryException and not DataImportException)
        {
            throw new DataImportException(ImportErrorCode.CorruptExcel,
                $"The workbook could not be read: {e.Message}. Open it in Excel, save it again as .xlsx and upload the new file.", inner: e);
        }
    }

    internal static IReadOnlyList<SheetTable> ReadWithClosedXml(byte[] bytes)
    {
        using var stream = new MemoryStream(bytes, writable: false);
        using var workbook = new XLWorkbook(stream);
        var sheets = new List<SheetTable>();
        foreach (var sheet in workbook.Worksheets)
        {
            var used = sheet.RangeUsed();
            var rows = new List<TableRow>();
            if (used is not null)
            {
                int lastRow = used.LastRow().RowNumber(), lastColumn = used.LastColumn().ColumnNumber();
                for (int r = 1; r <= lastRow; r++)
                {
                    var cells = new TableCell[lastColumn];
                    for (int c = 1; c <= lastColumn; c++)
                        cells[c - 1] = ReadCell(sheet.Cell(r, c));
                    rows.Add(new TableRow(r, cells));
                }
            }
            var merged = sheet.MergedRanges.Select(m => m.RangeAddress.ToString() ?? string.Empty).ToArray();
            sheets.Add(new SheetTable(sheet.Name, rows, merged));
        }
        return sheets;
    }

    private static TableCell ReadCell(IXLCell cell)
    {
        if (cell.HasFormula)
        {
            // Never evaluate: ClosedXML's engine lacks many functions. Excel saved the result with the file.
            object? cached = cell.CachedValue;
            string text = Format(cached);
            return new TableCell(text, IsFormula: true, FormulaHasNoCachedValue: text.Length == 0);
        }
        object value = cell.Value;
        if (value is double or DateTime or TimeSpan)
        {
            try { return new TableCell(cell.GetFormattedString()); }
            catch (Exception e) when (e is FormatException or ArgumentException) { return new TableCell(Format(value)); }
        }
        return new TableCell(Format(value));
    }

    private static string Format(object? value) => value switch
    {
        null => string.Empty,
        string s => Normalize(s),
        bool b => b ? "TRUE" : "FALSE",
        double d => d.ToString(CultureInfo.InvariantCulture),
        DateTime t => t.ToString("yyyy-MM-dd HH:mm:ss", CultureInfo.InvariantCulture).Replace(" 00:00:00", string.Empty, StringComparison.Ordinal),
        IFormattable f => f.ToString(null, CultureInfo.InvariantCulture),
        _ => Normalize(value.ToString() ?? string.Empty),
    };

    private static string Normalize(string s) => s.Replace("\r\n", "\n", StringComparison.Ordinal).Replace('\r', '\n');

    /// <summary>Cell values straight from the package parts: shared strings, inline strings, numbers, booleans, cached formula results.</summary>
    internal static IReadOnlyList<SheetTable> ReadWithOpenXml(byte[] bytes)
    {
        using var stream = new MemoryStream(bytes, writable: false);
        using var document = SpreadsheetDocument.Open(stream, false);
        var workbookPart = document.WorkbookPart
            ?? throw new DataImportException(ImportErrorCode.CorruptExcel, "The package has no workbook part: it is not an Excel workbook.");
        string[] shared = workbookPart.SharedStringTablePart?.SharedStringTable?.Elements<SharedStringItem>()
            .Select(SharedText).ToArray() ?? [];

        var sheets = new List<SheetTable>();
        foreach (var sheet in workbookPart.Workbook.Sheets?.Elements<Sheet>() ?? [])
        {
            if (sheet.Id?.Value is not { } id || workbookPart.GetPartById(id) is not WorksheetPart part)
                continue; // chart sheets and dialog sheets hold no cells
            var byRow = new SortedDictionary<int, SortedDictionary<int, TableCell>>();
            int rowNumber = 0, maxColumn = 0;
            foreach (var row in part.Worksheet.Descendants<Row>())
            {
                rowNumber = row.RowIndex?.Value is { } index ? (int)index : rowNumber + 1;
                var cells = byRow[rowNumber] = new SortedDictionary<int, TableCell>();
                int column = 0;
                foreach (var cell in row.Elements<Cell>())
                {
                    column = cell.CellReference?.Value is { } reference ? ColumnIndex(reference) : column + 1;
                    maxColumn = Math.Max(maxColumn, column);
                    cells[column] = CellText(cell, shared);
                }
            }
            int lastRow = byRow.Count == 0 ? 0 : byRow.Keys.Max();
            // Trim trailing empty rows and columns the way ClosedXML's RangeUsed does.
            while (lastRow > 0 && (!byRow.TryGetValue(lastRow, out var last) || last.Values.All(c => c.IsBlank && !c.IsFormula))) lastRow--;
            int lastColumn = 0;
            foreach (var (r, cells) in byRow)
                if (r <= lastRow)
                    foreach (var (c, cell) in cells)
                        if (!cell.IsBlank || cell.IsFormula) lastColumn = Math.Max(lastColumn, c);

            var rows = new List<TableRow>();
            for (int r = 1; r <= lastRow; r++)
            {
                var cells = new TableCell[lastColumn];
                for (int c = 1; c <= lastColumn; c++)
                    cells[c - 1] = byRow.TryGetValue(r, out var found) && found.TryGetValue(c, out var cell) ? cell : TableCell.Empty;
                rows.Add(new TableRow(r, cells));
            }
            var merged = part.Worksheet.Elements<MergeCells>().SelectMany(m => m.Elements<MergeCell>())
                .Select(m => m.Reference?.Value ?? string.Empty).Where(s => s.Length > 0).ToArray();
            sheets.Add(new SheetTable(sheet.Name?.Value ?? $"Sheet{sheets.Count + 1}", rows, merged));
        }
        return sheets;
    }

    private static string SharedText(SharedStringItem item) =>
        Normalize(item.Text?.Text ?? string.Concat(item.Elements<Run>().Select(r => r.Text?.Text)));

    private static TableCell CellText(Cell cell, string[] shared)
    {
        bool formula = cell.CellFormula is not null;
        string raw = cell.CellValue?.Text ?? string.Empty;
        var type = cell.DataType?.Value;
        string text;
        if (type == CellValues.SharedString)
            text = int.TryParse(raw, NumberStyles.Integer, CultureInfo.InvariantCulture, out int i) && i >= 0 && i < shared.Length ? shared[i] : string.Empty;
        else if (type == CellValues.InlineString)
            text = Normalize(cell.InlineString?.Text?.Text ?? string.Concat(cell.InlineString?.Elements<Run>().Select(r => r.Text?.Text) ?? []));
        else if (type == CellValues.Boolean)
            text = raw == "1" ? "TRUE" : raw.Length == 0 ? string.Empty : "FALSE";
        else
            text = Normalize(raw);
        return new TableCell(text, formula, formula && text.Length == 0);
    }

    /// <summary>"AB12" → 28.</summary>
    internal static int ColumnIndex(string reference)
    {
        int column = 0;
        foreach (char ch in reference)
        {
            if (!char.IsAsciiLetter(ch)) break;
            column = column * 26 + (char.ToUpperInvariant(ch) - 'A' + 1);
        }
        return column;
    }
}
