using ClosedXML.Excel;
using DocumentFormat.OpenXml;
using DocumentFormat.OpenXml.Packaging;
using DocumentFormat.OpenXml.Spreadsheet;
using A = DocumentFormat.OpenXml.Drawing;
using Xdr = DocumentFormat.OpenXml.Drawing.Spreadsheet;
using Pic = DocumentFormat.OpenXml.Drawing.Pictures;

namespace FineTune.Tests.Web.Support;

/// <summary>Test inputs: the committed fixtures and real files generated on the fly.</summary>
public static class TestFiles
{
    /// <summary>A file under FineTune.Tests/Fixtures, found by walking up from the test binaries.</summary>
    public static string Fixture(string relativePath)
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
        {
            string candidate = Path.Combine(dir.FullName, "FineTune.Tests", "Fixtures", relativePath);
            if (File.Exists(candidate) || Directory.Exists(candidate)) return candidate;
            candidate = Path.Combine(dir.FullName, "Fixtures", relativePath);
            if (dir.Name == "FineTune.Tests" && (File.Exists(candidate) || Directory.Exists(candidate))) return candidate;
        }
        throw new FileNotFoundException($"Fixture '{relativePath}' not found above {AppContext.BaseDirectory}.");
    }

    /// <summary>A file of the repository's samples/ folder (the tutorial's Q&amp;A workbook and CSV, also offered by the wizard).</summary>
    public static string Sample(string name) => Adapters.TestPaths.InRepo("samples", name);

    /// <summary>An .xlsx built with ClosedXML; <paramref name="fill"/> writes the cells.</summary>
    public static byte[] Workbook(Action<XLWorkbook> fill)
    {
        using var workbook = new XLWorkbook();
        fill(workbook);
        using var stream = new MemoryStream();
        workbook.SaveAs(stream);
        return stream.ToArray();
    }

    /// <summary>A 1×1 red PNG.</summary>
    public static readonly byte[] TinyPng = Convert.FromBase64String(
        "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8DwHwAFBQIAX8jx0gAAAABJRU5ErkJggg==");

    /// <summary>Adds a picture anchored at B2 to the first sheet, the way Excel stores one (drawing part + image part).</summary>
    public static byte[] WithPicture(byte[] xlsx)
    {
        using var stream = new MemoryStream();
        stream.Write(xlsx);
        using (var document = SpreadsheetDocument.Open(stream, true))
        {
            var worksheetPart = document.WorkbookPart!.WorksheetParts.First();
            var drawingsPart = worksheetPart.AddNewPart<DrawingsPart>();
            var imagePart = drawingsPart.AddImagePart(ImagePartType.Png);
            using (var png = new MemoryStream(TinyPng)) imagePart.FeedData(png);
            string imageId = drawingsPart.GetIdOfPart(imagePart);

            var anchor = new Xdr.TwoCellAnchor(
                new Xdr.FromMarker(new Xdr.ColumnId("1"), new Xdr.ColumnOffset("0"), new Xdr.RowId("1"), new Xdr.RowOffset("0")),
                new Xdr.ToMarker(new Xdr.ColumnId("3"), new Xdr.ColumnOffset("0"), new Xdr.RowId("4"), new Xdr.RowOffset("0")),
                new Xdr.Picture(
                    new Xdr.NonVisualPictureProperties(
                        new Xdr.NonVisualDrawingProperties { Id = 2U, Name = "Picture 1" },
                        new Xdr.NonVisualPictureDrawingProperties(new A.PictureLocks { NoChangeAspect = true })),
                    new Xdr.BlipFill(
                        new A.Blip { Embed = imageId },
                        new A.Stretch(new A.FillRectangle())),
                    new Xdr.ShapeProperties(
                        new A.Transform2D(new A.Offset { X = 0, Y = 0 }, new A.Extents { Cx = 952500, Cy = 952500 }),
                        new A.PresetGeometry(new A.AdjustValueList()) { Preset = A.ShapeTypeValues.Rectangle })),
                new Xdr.ClientData());
            drawingsPart.WorksheetDrawing = new Xdr.WorksheetDrawing(anchor);
            drawingsPart.WorksheetDrawing.Save();

            var worksheet = worksheetPart.Worksheet;
            var drawing = new Drawing { Id = worksheetPart.GetIdOfPart(drawingsPart) };
            // <drawing> goes after pageMargins/pageSetup/headerFooter in the schema order; before tableParts.
            var before = worksheet.Elements<TableParts>().FirstOrDefault() as OpenXmlElement
                ?? worksheet.Elements<LegacyDrawing>().FirstOrDefault();
            if (before is not null) worksheet.InsertBefore(drawing, before);
            else worksheet.Append(drawing);
            worksheet.Save();
        }
        return stream.ToArray();
    }

    /// <summary>Sets a formula with a cached value straight in the XML (as Excel saves it), on the first sheet.</summary>
    public static byte[] WithFormula(byte[] xlsx, string cellReference, string formula, string? cachedText)
    {
        using var stream = new MemoryStream();
        stream.Write(xlsx);
        using (var document = SpreadsheetDocument.Open(stream, true))
        {
            var worksheetPart = document.WorkbookPart!.WorksheetParts.First();
            var cell = worksheetPart.Worksheet.Descendants<Cell>().First(c => c.CellReference == cellReference);
            cell.RemoveAllChildren();
            cell.DataType = cachedText is null ? null : new EnumValue<CellValues>(CellValues.String);
            cell.Append(new CellFormula(formula));
            if (cachedText is not null) cell.Append(new CellValue(cachedText));
            worksheetPart.Worksheet.Save();
        }
        return stream.ToArray();
    }
}
