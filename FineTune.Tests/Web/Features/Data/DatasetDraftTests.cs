using System.Text;
using FineTune.Web.Features.Data;
using Microsoft.Extensions.Logging.Abstractions;

namespace FineTune.Tests.Web.Features.Data;

public class DatasetDraftTests
{
    private static DatasetDraft Draft(string csv)
    {
        var importer = new DataImporter(new ExcelTableReader(NullLogger<ExcelTableReader>.Instance));
        var file = importer.Parse(Encoding.UTF8.GetBytes(csv), "d.csv");
        return new DatasetDraft(importer.Build(file, new ImportSettings()));
    }

    [Fact]
    public void Excluded_rows_leave_and_fixed_rows_join_the_training_set()
    {
        var draft = Draft("question,answer\nq1,a1\nq2,\nq3,a3\n");
        Assert.Equal(new[] { 2, 4 }, draft.FinalRows.Select(r => r.SourceRow));

        draft.SetExcluded(4, true);
        Assert.Equal(new[] { 2 }, draft.FinalRows.Select(r => r.SourceRow));
        Assert.True(draft.IsExcluded(4));

        draft.Fix(3, " q2 ", " now answered ");
        Assert.Equal(new[] { 2, 3 }, draft.FinalRows.Select(r => r.SourceRow));
        Assert.Equal(("q2", "now answered"), (draft.FinalRows[1].Instruction, draft.FinalRows[1].Output));
        Assert.True(draft.IsEdited(3));

        draft.SetExcluded(4, false);
        draft.Fix(2, "q1", "");
        Assert.Equal(new[] { 3, 4 }, draft.FinalRows.Select(r => r.SourceRow));
        Assert.Throws<ArgumentOutOfRangeException>(() => draft.Fix(99, "x", "y"));
    }
}
