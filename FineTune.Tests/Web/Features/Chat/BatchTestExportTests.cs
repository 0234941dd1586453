using ClosedXML.Excel;
using FineTune.Web.Features.Chat;

namespace FineTune.Tests.Web.Features.Chat;

public class BatchTestExportTests
{
    [Fact]
    public void Exports_questions_and_both_answers_to_a_workbook()
    {
        var rows = new[]
        {
            new BatchTestRow("可以退貨嗎？", "七天內可以。") { BaseAnswer = "不確定", FineTunedAnswer = "購買後7天內可以退貨。" },
            new BatchTestRow("=1+1", "2") { BaseAnswer = "0800-123", FineTunedAnswer = "line1\nline2" },
        };
        byte[] bytes = BatchTestExport.ToExcel(rows, ["問題", "預期答案", "原始模型", "微調後模型", "先前的對話"]);

        using var workbook = new XLWorkbook(new MemoryStream(bytes));
        var sheet = workbook.Worksheet(1);
        Assert.True(sheet.Cell(1, 5).IsEmpty()); // no conversations, no earlier-turns column
        Assert.Equal(new[] { "問題", "預期答案", "原始模型", "微調後模型" }, Enumerable.Range(1, 4).Select(c => sheet.Cell(1, c).GetString()));
        Assert.Equal("購買後7天內可以退貨。", sheet.Cell(2, 4).GetString());
        Assert.False(sheet.Cell(3, 1).HasFormula); // user text is data, never a formula
        Assert.Equal("=1+1", sheet.Cell(3, 1).GetString());
        Assert.Equal("0800-123", sheet.Cell(3, 3).GetString());
        Assert.Equal("line1\nline2", sheet.Cell(3, 4).GetString());
        Assert.Throws<ArgumentException>(() => BatchTestExport.ToExcel(rows, ["a"]));
    }
}
