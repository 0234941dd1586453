using System.Text;
using ClosedXML.Excel;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Data;
using Microsoft.Extensions.Logging.Abstractions;

namespace FineTune.Tests.Web.Features.Data;

public class DataImporterTests
{
    private static readonly DataImporter Importer = new(new ExcelTableReader(NullLogger<ExcelTableReader>.Instance));

    private static ImportResult Import(byte[] bytes, string name, ImportSettings? settings = null)
    {
        var file = Importer.Parse(bytes, name);
        return Importer.Build(file, settings ?? new ImportSettings(DataImporter.GuessSheet(file)));
    }

    private static void AssertTutorialRows(ImportResult result)
    {
        Assert.Equal(5, result.Report.DataRows);
        Assert.Equal(5, result.Report.UsableRows);
        var rows = result.UsableRows;
        for (int i = 0; i < 5; i++)
        {
            Assert.Equal(QaTemplate.TutorialRows[i].Question, rows[i].Instruction);
            Assert.Equal(QaTemplate.TutorialRows[i].Answer, rows[i].Output);
        }
    }

    [Fact]
    public void Imports_the_tutorial_workbook()
    {
        var result = Import(File.ReadAllBytes(TestFiles.Sample("tutorial-qa.xlsx")), "tutorial-qa.xlsx");

        AssertTutorialRows(result);
        Assert.Equal(0, result.Mapping.HeaderRowIndex);
        Assert.Equal(new[] { 2, 3, 4, 5, 6 }, result.UsableRows.Select(r => r.SourceRow));
        Assert.Contains("\n2. 電子郵件", result.UsableRows[1].Output);
        Assert.False(result.File.UsedFallbackReader);
        Assert.Empty(result.Report.Issues);
    }

    [Fact]
    public void Imports_the_tutorial_csv_with_multi_line_quoted_cells()
    {
        var result = Import(File.ReadAllBytes(TestFiles.Sample("tutorial-qa.csv")), "tutorial-qa.csv");

        AssertTutorialRows(result);
        Assert.Equal("UTF-8", result.File.EncodingName);
        // Records start on lines 2, 3, 4 (a 4-line answer), 8, 9.
        Assert.Equal(new[] { 2, 3, 7, 8, 9 }, result.UsableRows.Select(r => r.SourceRow));
    }

    [Theory]
    [InlineData("utf-8-bom", "UTF-8 BOM")]
    [InlineData("big5", "Big5")]
    [InlineData("utf-16le", "UTF-16 LE")]
    [InlineData("utf-16be", "UTF-16 BE")]
    public void Detects_the_encoding_of_csv_files(string encodingName, string expected)
    {
        Encoding.RegisterProvider(CodePagesEncodingProvider.Instance);
        string text = "問題,回答\r\n可以退貨嗎？,購買後7天內可申請退貨。\r\n運送需要多久？,一般3-5個工作天。\r\n";
        byte[] bytes = encodingName switch
        {
            "utf-8-bom" => [.. Encoding.UTF8.GetPreamble(), .. Encoding.UTF8.GetBytes(text)],
            "big5" => Encoding.GetEncoding(950).GetBytes(text),
            "utf-16le" => [.. Encoding.Unicode.GetPreamble(), .. Encoding.Unicode.GetBytes(text)],
            _ => [.. Encoding.BigEndianUnicode.GetPreamble(), .. Encoding.BigEndianUnicode.GetBytes(text)],
        };

        var result = Import(bytes, "data.csv");

        Assert.Equal(expected, result.File.EncodingName);
        Assert.Equal(2, result.Report.UsableRows);
        Assert.Equal("可以退貨嗎？", result.UsableRows[0].Instruction);
        Assert.Equal("一般3-5個工作天。", result.UsableRows[1].Output);
    }

    private const string SimplifiedCsv =
        "问题,回答\r\n" +
        "可以退货吗？,购买后7天内可申请退货，请保留发票与原包装。\r\n" +
        "运送需要多久？,一般3-5个工作天，偏远地区会再多两天。\r\n" +
        "怎么联系客服？,请拨打客服电话或者在官网留言，我们会尽快回复。\r\n";

    private const string TraditionalCsv =
        "問題,回答\r\n" +
        "可以退貨嗎？,購買後7天內可申請退貨，請保留發票與原包裝。\r\n" +
        "運送需要多久？,一般3-5個工作天，偏遠地區會再多兩天。\r\n" +
        "怎麼聯繫客服？,請撥打客服電話或者在官網留言，我們會盡快回覆。\r\n";

    [Fact]
    public void A_gbk_file_of_simplified_chinese_is_read_as_gb18030_with_its_header_found()
    {
        Encoding.RegisterProvider(CodePagesEncodingProvider.Instance);
        byte[] gbk = Encoding.GetEncoding(936).GetBytes(SimplifiedCsv);

        var result = Import(gbk, "zh-cn.csv");

        Assert.Equal(TextEncoding.Gb18030, result.File.Encoding);
        Assert.Equal(0, result.Mapping.HeaderRowIndex);
        Assert.Equal(3, result.Report.UsableRows);
        Assert.Equal("可以退货吗？", result.UsableRows[0].Instruction);
        Assert.Equal("请拨打客服电话或者在官网留言，我们会尽快回复。", result.UsableRows[2].Output);
    }

    [Fact]
    public void A_big5_file_of_traditional_chinese_is_read_as_big5()
    {
        Encoding.RegisterProvider(CodePagesEncodingProvider.Instance);
        byte[] big5 = Encoding.GetEncoding(950).GetBytes(TraditionalCsv);

        var result = Import(big5, "zh-tw.csv");

        Assert.Equal(TextEncoding.Big5, result.File.Encoding);
        Assert.Equal(0, result.Mapping.HeaderRowIndex);
        Assert.Equal("怎麼聯繫客服？", result.UsableRows[2].Instruction);
    }

    [Fact]
    public void The_user_can_override_the_encoding_and_the_header_is_guessed_again()
    {
        Encoding.RegisterProvider(CodePagesEncodingProvider.Instance);
        byte[] gbk = Encoding.GetEncoding(936).GetBytes(SimplifiedCsv);

        var wrong = Importer.Parse(gbk, "zh-cn.csv", TextEncoding.Big5);
        Assert.Equal(TextEncoding.Big5, wrong.Encoding);
        Assert.NotEqual("问题", wrong.Sheets[0].Rows[0][0].Text);

        var right = Importer.Build(Importer.Parse(gbk, "zh-cn.csv", TextEncoding.Gb18030), new ImportSettings());
        Assert.Equal("问题", right.Sheet.Rows[0][0].Text);
        Assert.Equal(0, right.Mapping.HeaderRowIndex);
        Assert.Equal(3, right.Report.UsableRows);
    }

    [Fact]
    public void Utf16_without_a_byte_order_mark_is_detected_from_its_zero_bytes()
    {
        Assert.Equal(TextEncoding.Utf16LE, TextDecoder.Detect(Encoding.Unicode.GetBytes(TraditionalCsv)));
        Assert.Equal(TextEncoding.Utf16BE, TextDecoder.Detect(Encoding.BigEndianUnicode.GetBytes(TraditionalCsv)));
        Assert.Equal(TextEncoding.Utf8, TextDecoder.Detect(Encoding.UTF8.GetBytes(SimplifiedCsv)));
    }

    [Fact]
    public void Big5_bytes_are_not_mistaken_for_utf8()
    {
        Encoding.RegisterProvider(CodePagesEncodingProvider.Instance);
        byte[] big5 = Encoding.GetEncoding(950).GetBytes("保固");
        Assert.Throws<DecoderFallbackException>(() => new UTF8Encoding(false, true).GetString(big5));
        Assert.Equal(TextEncoding.Big5, TextDecoder.Decode(big5).Encoding);
    }

    [Fact]
    public void Refuses_bytes_in_no_supported_encoding_and_says_where()
    {
        // 0xA4 0x0A: a Big5 lead byte followed by a line feed is neither UTF-8 nor Big5.
        byte[] bytes = [.. Encoding.ASCII.GetBytes("question,answer\nq,"), 0xA4, 0x0A];
        var e = Assert.Throws<DataImportException>(() => Importer.Parse(bytes, "bad.csv"));
        Assert.Equal(ImportErrorCode.UnknownEncoding, e.Code);
        Assert.NotNull(e.Location);
    }

    [Fact]
    public void Reads_tsv_and_semicolon_csv()
    {
        var tsv = Import(Encoding.UTF8.GetBytes("instruction\toutput\nq1\ta, with comma\n"), "d.tsv");
        Assert.Equal("a, with comma", tsv.UsableRows.Single().Output);

        var semicolon = Import(Encoding.UTF8.GetBytes("question;answer\nq1;a1\nq2;\"a;2\"\n"), "d.csv");
        Assert.Equal(new[] { "a1", "a;2" }, semicolon.UsableRows.Select(r => r.Output));
    }

    [Fact]
    public void Unclosed_quote_names_the_line()
    {
        var e = Assert.Throws<DataImportException>(() => Importer.Parse(Encoding.UTF8.GetBytes("q,a\nx,y\n\"open,z\n"), "d.csv"));
        Assert.Equal(ImportErrorCode.UnclosedQuote, e.Code);
        Assert.Equal("line 3", e.Location);
    }

    [Fact]
    public void Reads_alpaca_jsonl_and_json()
    {
        string jsonl = "{\"instruction\":\"翻譯\",\"input\":\"hello\",\"output\":\"你好\"}\n\n{\"instruction\":\"q2\",\"output\":\"a2\",\"system\":\"be brief\"}\n";
        var lines = Import(Encoding.UTF8.GetBytes(jsonl), "d.jsonl");
        Assert.Equal(2, lines.Report.UsableRows);
        Assert.Equal("hello", lines.UsableRows[0].Input);
        Assert.Equal(1, lines.UsableRows[0].SourceRow);
        Assert.Equal(3, lines.UsableRows[1].SourceRow);
        Assert.Equal("be brief", lines.UsableRows[1].System);
        Assert.Null(lines.UsableRows[0].System);

        var array = Import(Encoding.UTF8.GetBytes("[{\"instruction\":\"q\",\"input\":\"\",\"output\":\"a\"}]"), "d.json");
        Assert.Equal("a", array.UsableRows.Single().Output);
    }

    [Fact]
    public void Broken_jsonl_lines_are_reported_by_line_and_left_out_and_the_rest_imports()
    {
        string jsonl = "{\"instruction\":\"q1\",\"output\":\"a1\"}\n"
            + "{\"instruction\":\"q2\",\"output\":\"a2\"}\n"
            + "\n"
            + "{\"instruction\":\"q4\",\"output\":\"a4\",}\n"  // trailing comma: not JSON
            + "[\"q5\",\"a5\"]\n"                                // JSON, but not an object
            + "{\"instruction\":\"q6\",\"output\":\"a6\"}\n";

        var result = Import(Encoding.UTF8.GetBytes(jsonl), "d.jsonl");

        Assert.Equal(new[] { "q1", "q2", "q6" }, result.UsableRows.Select(r => r.Instruction));
        Assert.Equal(new[] { 1, 2, 6 }, result.UsableRows.Select(r => r.SourceRow));
        Assert.Equal(new[] { 4 }, result.Report.RowsWith(IssueKind.InvalidJsonLine));
        Assert.Equal(new[] { 5 }, result.Report.RowsWith(IssueKind.NotAnObjectLine));
        Assert.Equal(3, result.Report.UsableRows);
    }

    [Fact]
    public void A_jsonl_file_without_one_readable_line_is_refused_at_its_first_bad_line_without_the_parsers_own_position()
    {
        var e = Assert.Throws<DataImportException>(() => Importer.Parse(Encoding.UTF8.GetBytes("\n{oops\n{also bad\n"), "d.jsonl"));
        Assert.Equal(ImportErrorCode.InvalidJson, e.Code);
        Assert.Equal("line 2", e.Location);
        Assert.DoesNotContain("LineNumber", e.Detail);

        var shape = Assert.Throws<DataImportException>(() => Importer.Parse(Encoding.UTF8.GetBytes("[1,2]"), "d.json"));
        Assert.Equal(ImportErrorCode.UnexpectedJsonShape, shape.Code);
        Assert.Equal("item 1", shape.Location);
    }

    [Fact]
    public void Finds_the_header_below_title_rows_and_on_a_later_sheet()
    {
        byte[] xlsx = TestFiles.Workbook(wb =>
        {
            wb.AddWorksheet("說明").Cell(1, 1).SetValue("請看第二個工作表");
            var sheet = wb.AddWorksheet("資料");
            sheet.Cell(1, 1).SetValue("客服問答集 2024");
            sheet.Cell(2, 1).SetValue("製表：客服部");
            sheet.Cell(4, 1).SetValue("編號");
            sheet.Cell(4, 2).SetValue("提問");
            sheet.Cell(4, 3).SetValue("答案");
            sheet.Cell(5, 1).SetValue(1);
            sheet.Cell(5, 2).SetValue("可以退貨嗎？");
            sheet.Cell(5, 3).SetValue("七天內可以。");
        });

        var result = Import(xlsx, "faq.xlsx");

        Assert.Equal(1, result.SheetIndex);
        Assert.Equal(3, result.Mapping.HeaderRowIndex); // row 4
        Assert.Equal(1, result.Mapping.Instruction);
        Assert.Equal(2, result.Mapping.Output);
        var row = Assert.Single(result.UsableRows);
        Assert.Equal(("可以退貨嗎？", "七天內可以。", 5), (row.Instruction, row.Output, row.SourceRow));
        Assert.Equal(new[] { 1, 2 }, result.Report.RowsWith(IssueKind.RowAboveHeaderSkipped));
        Assert.Equal("B: 提問", result.ColumnLabels[1]);
    }

    [Theory]
    [InlineData("question", "answer", null, null)]
    [InlineData("問題", "回答", "補充說明", "系統提示")]
    [InlineData("Instruction", "Output", "Input", "System")]
    [InlineData("問題（必填）", "回答（必填）", null, null)]
    public void Guesses_columns_from_header_names(string q, string a, string? input, string? system)
    {
        string[] header = new[] { "id", a, q, input, system }.Where(h => h is not null).ToArray()!;
        var sheet = new SheetTable("s", [new TableRow(1, header.Select(h => new TableCell(h)).ToArray())], []);
        var mapping = ColumnGuesser.Guess(sheet);

        Assert.Equal(0, mapping.HeaderRowIndex);
        Assert.Equal(Array.IndexOf(header, q), mapping.Instruction);
        Assert.Equal(Array.IndexOf(header, a), mapping.Output);
        Assert.Equal(input is null ? null : Array.IndexOf(header, input), mapping.Input);
        Assert.Equal(system is null ? null : Array.IndexOf(header, system), mapping.System);
    }

    [Fact]
    public void Without_a_header_takes_the_first_two_used_columns_and_says_so()
    {
        var result = Import(Encoding.UTF8.GetBytes("x,q1,a1\nx,q2,a2\n"), "d.csv",
            new ImportSettings(Mapping: new ColumnMapping(-1, 1, 2)));
        Assert.Equal(2, result.Report.UsableRows);
        Assert.Equal(1, result.Report.Count(IssueKind.NoHeaderFound));

        var guessed = Import(Encoding.UTF8.GetBytes(",q1,a1\n,q2,a2\n"), "d.csv");
        Assert.Equal((-1, 1, 2), (guessed.Mapping.HeaderRowIndex, guessed.Mapping.Instruction, guessed.Mapping.Output));
    }

    [Fact]
    public void Reports_empty_cells_duplicates_blank_rows_and_long_rows_with_row_numbers()
    {
        byte[] xlsx = TestFiles.Workbook(wb =>
        {
            var s = wb.AddWorksheet("Q&A");
            s.Cell(1, 1).SetValue("問題"); s.Cell(1, 2).SetValue("回答");
            s.Cell(2, 1).SetValue("q1"); s.Cell(2, 2).SetValue("a1");
            s.Cell(3, 1).SetValue("q2");                                   // empty answer
            // row 4 blank
            s.Cell(5, 2).SetValue("a without question");                  // empty question
            s.Cell(6, 1).SetValue(" Q1 "); s.Cell(6, 2).SetValue("again"); // duplicate of row 2 (case/space-insensitive)
            s.Cell(7, 1).SetValue("long"); s.Cell(7, 2).SetValue(new string('字', 600));
        });

        var result = Import(xlsx, "d.xlsx", new ImportSettings(MaxSeqLength: 512, CountTokens: r => r.Instruction.Length + r.Output.Length));
        var report = result.Report;

        Assert.Equal(5, report.DataRows);
        Assert.Equal(3, report.UsableRows);
        Assert.Equal(new[] { 3 }, report.RowsWith(IssueKind.EmptyOutput));
        Assert.Equal(new[] { 5 }, report.RowsWith(IssueKind.EmptyInstruction));
        Assert.Equal(new[] { 4 }, report.RowsWith(IssueKind.BlankRowSkipped));
        var duplicate = Assert.Single(report.Issues, i => i.Kind == IssueKind.Duplicate);
        Assert.Equal((6, 2), (duplicate.Row, duplicate.OtherRow!.Value));
        var tooLong = Assert.Single(report.Issues, i => i.Kind == IssueKind.TooLong);
        Assert.Equal((7, 604), (tooLong.Row, tooLong.Tokens!.Value));
        Assert.Equal(new[] { 2, 6, 7 }, result.UsableRows.Select(r => r.SourceRow));
    }

    [Fact]
    public void Formulas_use_the_cached_value_and_are_reported()
    {
        byte[] xlsx = TestFiles.Workbook(wb =>
        {
            var s = wb.AddWorksheet("s");
            s.Cell(1, 1).SetValue("question"); s.Cell(1, 2).SetValue("answer");
            s.Cell(2, 1).SetValue("q1"); s.Cell(2, 2).SetValue("placeholder");
            s.Cell(3, 1).SetValue("q2"); s.Cell(3, 2).SetValue("placeholder");
        });
        xlsx = TestFiles.WithFormula(xlsx, "B2", "CONCATENATE(\"營業時間\",\"9-18\")", "營業時間9-18");
        xlsx = TestFiles.WithFormula(xlsx, "B3", "SOMEUNKNOWNFUNC(A3)", null);

        var result = Import(xlsx, "f.xlsx");

        Assert.Equal("營業時間9-18", result.Rows[0].Row.Output);
        var formula = Assert.Single(result.Report.Issues, i => i.Kind == IssueKind.Formula);
        Assert.Equal((2, "B2"), (formula.Row, formula.Cell));
        var missing = Assert.Single(result.Report.Issues, i => i.Kind == IssueKind.FormulaWithoutValue);
        Assert.Equal("B3", missing.Cell);
        Assert.Equal(new[] { 3 }, result.Report.RowsWith(IssueKind.EmptyOutput));
    }

    [Fact]
    public void Merged_cells_are_reported_with_their_range()
    {
        byte[] xlsx = TestFiles.Workbook(wb =>
        {
            var s = wb.AddWorksheet("s");
            s.Cell(1, 1).SetValue("question"); s.Cell(1, 2).SetValue("answer");
            s.Cell(2, 1).SetValue("q1"); s.Cell(2, 2).SetValue("same answer");
            s.Cell(3, 1).SetValue("q2");
            s.Range("B2:B3").Merge();
        });

        var result = Import(xlsx, "m.xlsx");

        var merged = Assert.Single(result.Report.Issues, i => i.Kind == IssueKind.MergedCells);
        Assert.Equal(("B2:B3", 2), (merged.Cell, merged.Row));
        Assert.Equal(new[] { 3 }, result.Report.RowsWith(IssueKind.EmptyOutput));
    }

    [Fact]
    public void A_workbook_with_a_picture_still_imports()
    {
        byte[] xlsx = TestFiles.WithPicture(File.ReadAllBytes(TestFiles.Sample("tutorial-qa.xlsx")));

        var result = Import(xlsx, "with-picture.xlsx");

        AssertTutorialRows(result);
        // ClosedXML 0.95 throws on this workbook where System.Drawing has no libgdiplus (Linux): the OpenXml path read it.
        if (!OperatingSystem.IsWindows() && !File.Exists("/usr/lib/libgdiplus.so") && !File.Exists("/usr/lib/x86_64-linux-gnu/libgdiplus.so"))
            Assert.True(result.File.UsedFallbackReader);
    }

    [Fact]
    public void The_OpenXml_fallback_reads_the_same_cells_as_ClosedXml()
    {
        byte[] xlsx = TestFiles.Workbook(wb =>
        {
            var s = wb.AddWorksheet("資料");
            s.Cell(2, 1).SetValue("問題"); s.Cell(2, 2).SetValue("回答"); s.Cell(2, 3).SetValue("數量");
            s.Cell(3, 1).SetValue("q1\n第二行"); s.Cell(3, 2).SetValue("a1"); s.Cell(3, 3).SetValue(42);
            s.Cell(5, 1).SetValue("q2"); s.Cell(5, 2).SetValue("a2"); s.Cell(5, 3).SetValue(true);
            s.Range("A6:B6").Merge();
            wb.AddWorksheet("空白");
        });

        var closed = ExcelTableReader.ReadWithClosedXml(xlsx);
        var open = ExcelTableReader.ReadWithOpenXml(xlsx);

        Assert.Equal(closed.Select(s => s.Name), open.Select(s => s.Name));
        Assert.Equal(closed[0].MergedRanges, open[0].MergedRanges);
        Assert.Equal(
            closed[0].Rows.Select(r => (r.Number, string.Join("|", r.Cells.Select(c => c.Text)))),
            open[0].Rows.Select(r => (r.Number, string.Join("|", r.Cells.Select(c => c.Text)))));
        Assert.Empty(open[1].Rows);
    }

    [Theory]
    [InlineData(new byte[] { 0xD0, 0xCF, 0x11, 0xE0, 0xA1, 0xB1, 0x1A, 0xE1 }, "old.xlsx", ImportErrorCode.LegacyOrEncryptedExcel)]
    [InlineData(new byte[] { 0x50, 0x4B, 0x03, 0x04, 0x00, 0x00 }, "broken.xlsx", ImportErrorCode.CorruptExcel)]
    [InlineData(new byte[] { 0x68, 0x69 }, "notes.xlsx", ImportErrorCode.CorruptExcel)]
    [InlineData(new byte[] { 0x68, 0x69 }, "sheet.xls", ImportErrorCode.UnsupportedExtension)]
    [InlineData(new byte[] { }, "empty.csv", ImportErrorCode.EmptyFile)]
    [InlineData(new byte[] { 0x0A, 0x0A, 0x2C, 0x0A }, "blank.csv", ImportErrorCode.EmptyFile)]
    public void Unreadable_files_give_a_typed_message(byte[] bytes, string name, ImportErrorCode code)
    {
        var e = Assert.Throws<DataImportException>(() => Importer.Parse(bytes, name));
        Assert.Equal(code, e.Code);
        Assert.False(string.IsNullOrWhiteSpace(e.Message));
    }

    [Fact]
    public async Task Uploads_over_the_limit_are_refused_while_reading()
    {
        using var stream = new MemoryStream(new byte[3 * 1024 * 1024]);
        var e = await Assert.ThrowsAsync<DataImportException>(() => Importer.ReadAsync(stream, "big.csv", 1024 * 1024));
        Assert.Equal(ImportErrorCode.TooLarge, e.Code);
    }

    [Theory]
    [InlineData(1000, 1000)] // the browser's size is right: one array of that size
    [InlineData(1000, 600)] // declared too small: the rest is read on
    [InlineData(1000, 4000)] // declared too large: what came
    public async Task The_declared_size_sizes_the_buffer_but_never_decides_what_is_read(int actual, int declared)
    {
        byte[] bytes = [.. Enumerable.Range(0, actual).Select(i => (byte)i)];
        Assert.Equal(bytes, await DataImporter.ReadLimitedAsync(new MemoryStream(bytes), 8000, declared));
    }

    [Fact]
    public async Task A_stream_longer_than_it_declared_is_still_refused_over_the_limit()
    {
        var e = await Assert.ThrowsAsync<DataImportException>(() => DataImporter.ReadLimitedAsync(new MemoryStream(new byte[3000]), 2000, declaredBytes: 1000));
        Assert.Equal(ImportErrorCode.TooLarge, e.Code);
    }

    [Fact]
    public void A_large_csv_is_parsed_as_it_is_decoded_with_the_same_rows_as_from_one_string()
    {
        var text = new System.Text.StringBuilder("question;answer\r\n");
        for (int i = 0; i < 5000; i++) text.Append($"\"問 {i}; \"\"引號\"\"\";\"答\r\n第二行 {i}\"\r\n");
        byte[] bytes = System.Text.Encoding.UTF8.GetBytes(text.ToString());
        var streamed = Importer.Parse(bytes, "big.csv").Sheets[0];
        var whole = DelimitedTableReader.Read(text.ToString(), "big");
        Assert.Equal(5001, streamed.Rows.Count);
        Assert.Equal(whole.Rows.Select(r => (r.Number, string.Join("|", r.Cells.Select(c => c.Text)))), streamed.Rows.Select(r => (r.Number, string.Join("|", r.Cells.Select(c => c.Text)))));
        Assert.Equal("問 4999; \"引號\"", streamed.Rows[^1][0].Text);
        Assert.Equal("答\n第二行 4999", streamed.Rows[^1][1].Text);
        Assert.Equal(10000, streamed.Rows[^1].Number); // records span two lines: the last starts on line 2 + 2 × 4999
    }

    [Fact]
    public void The_template_has_zh_TW_headers_and_the_tutorial_rows()
    {
        byte[] template = QaTemplate.Create();
        using (var workbook = new XLWorkbook(new MemoryStream(template)))
        {
            var sheet = workbook.Worksheet(1);
            Assert.Equal("問題", sheet.Cell(1, 1).GetString());
            Assert.Equal("回答", sheet.Cell(1, 2).GetString());
            Assert.Equal(XLDataType.Text, sheet.Cell(5, 2).DataType);
        }
        AssertTutorialRows(Import(template, QaTemplate.FileName));
    }

    [Fact]
    public void The_dataset_hash_depends_on_content_not_on_the_file()
    {
        var fromXlsx = Import(File.ReadAllBytes(TestFiles.Sample("tutorial-qa.xlsx")), "a.xlsx").UsableRows;
        var fromCsv = Import(File.ReadAllBytes(TestFiles.Sample("tutorial-qa.csv")), "a.csv").UsableRows;
        Assert.Equal(DataImporter.Hash(fromXlsx), DataImporter.Hash(fromCsv));
        Assert.NotEqual(DataImporter.Hash(fromXlsx), DataImporter.Hash(fromXlsx.Take(4)));
    }
}
