using ClosedXML.Excel;

namespace FineTune.Web.Features.Data;

/// <summary>The Excel template offered for download: zh-TW headers and the tutorial's five Q&amp;A rows.</summary>
public static class QaTemplate
{
    public const string FileName = "finetune-qa-template.xlsx";
    public const string ContentType = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet";
    public const string InstructionHeader = "問題";
    public const string OutputHeader = "回答";

    public static readonly (string Question, string Answer)[] TutorialRows =
    [
        ("你們的產品保固期是多久？", "我們的產品提供一年免費保固服務，在保固期內如有任何品質問題都可以免費維修或更換。"),
        ("如何聯繫客服？", "您可以透過以下方式聯繫我們：\n1. 客服電話：0800-123-456（週一至週五 9:00-18:00）\n2. 電子郵件：service@example.com\n3. 線上客服：官網右下角的聊天按鈕"),
        ("可以退貨嗎？", "購買後7天內，如商品未使用且包裝完整，可申請退貨。請聯繫客服取得退貨授權碼。"),
        ("運送需要多久時間？", "訂單確認後，一般在3-5個工作天內送達。偏遠地區可能需要額外1-2天。"),
        ("付款方式有哪些？", "我們接受以下付款方式：\n1. 信用卡（Visa、MasterCard、JCB）\n2. ATM轉帳\n3. 貨到付款（限台灣本島）\n4. 超商代收"),
    ];

    public static byte[] Create()
    {
        using var workbook = new XLWorkbook();
        var sheet = workbook.AddWorksheet("問答資料");
        sheet.Cell(1, 1).SetValue(InstructionHeader);
        sheet.Cell(1, 2).SetValue(OutputHeader);
        sheet.Row(1).Style.Font.Bold = true;
        sheet.Row(1).Style.Fill.BackgroundColor = XLColor.LightGray;
        for (int i = 0; i < TutorialRows.Length; i++)
        {
            sheet.Cell(i + 2, 1).SetValue(TutorialRows[i].Question);
            sheet.Cell(i + 2, 2).SetValue(TutorialRows[i].Answer);
        }
        // Fixed widths: ClosedXML's AdjustToContents needs System.Drawing fonts, absent on Linux servers.
        sheet.Column(1).Width = 36;
        sheet.Column(2).Width = 80;
        sheet.Columns(1, 2).Style.Alignment.WrapText = true;
        sheet.Columns(1, 2).Style.Alignment.Vertical = XLAlignmentVerticalValues.Top;
        sheet.SheetView.FreezeRows(1);
        using var stream = new MemoryStream();
        workbook.SaveAs(stream);
        return stream.ToArray();
    }
}
