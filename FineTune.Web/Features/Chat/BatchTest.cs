using ClosedXML.Excel;

namespace FineTune.Web.Features.Chat;

/// <summary>One question asked to both models, with the answer the data expected.</summary>
public sealed class BatchTestRow(string question, string expected)
{
    public string Question { get; } = question;
    public string Expected { get; } = expected;
    public string BaseAnswer { get; set; } = string.Empty;
    public string FineTunedAnswer { get; set; } = string.Empty;
}

public static class BatchTestExport
{
    public const string ContentType = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";

    /// <summary>An .xlsx with the four columns; <paramref name="headers"/> are the localized column titles.</summary>
    public static byte[] ToExcel(IEnumerable<BatchTestRow> rows, IReadOnlyList<string> headers)
    {
        if (headers.Count != 4)
            throw new ArgumentException($"Expected 4 headers (question, expected, base, fine-tuned), got {headers.Count}.", nameof(headers));
        using var workbook = new XLWorkbook();
        var sheet = workbook.AddWorksheet("Test");
        for (int c = 0; c < 4; c++)
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
            r++;
        }
        sheet.Columns(1, 4).Style.Alignment.WrapText = true;
        sheet.Columns(1, 4).Style.Alignment.Vertical = XLAlignmentVerticalValues.Top;
        sheet.SheetView.FreezeRows(1);
        using var stream = new MemoryStream();
        workbook.SaveAs(stream);
        return stream.ToArray();
    }
}
