using Bunit;
using System.Globalization;
using FineTune.Web.Components.Pages.Wizard.Data;
using FineTune.Web.Features.Data;

namespace FineTune.Tests.Web.Components;

/// <summary>The data step's report states counts as English says them ("1 row", "2 rows"); zh-TW has one form.</summary>
public sealed class ImportReportTests : ComponentTestContext
{
    private static readonly ValidationReport Report = new(5, 4,
    [
        new ValidationIssue(IssueKind.EmptyOutput, 3),
        new ValidationIssue(IssueKind.Duplicate, 4, OtherRow: 1),
        new ValidationIssue(IssueKind.Duplicate, 5, OtherRow: 2),
    ]);

    [Fact]
    public void English_counts_of_one_are_singular_and_of_two_plural()
    {
        CultureInfo.CurrentCulture = CultureInfo.CurrentUICulture = new CultureInfo("en");
        var lines = Render<ImportReport>(p => p.Add(r => r.Report, Report)).FindAll(".report-line").Select(l => l.TextContent).ToArray();

        Assert.Equal(2, lines.Length);
        Assert.Contains("1 row without an answer (not used)", lines[0]);
        Assert.Contains("— row 3", lines[0]);
        Assert.DoesNotContain("rows", lines[0]);
        Assert.Contains("2 rows repeat an earlier question", lines[1]);
        Assert.Contains("— rows 4, 5", lines[1]);
    }

    [Fact]
    public void Zh_TW_keeps_its_one_form()
    {
        var lines = Render<ImportReport>(p => p.Add(r => r.Report, Report)).FindAll(".report-line").Select(l => l.TextContent).ToArray();

        Assert.Contains("1 列沒有回答", lines[0]);
        Assert.Contains("第 3 列", lines[0]);
        Assert.Contains("第 4, 5 列", lines[1]);
    }
}
