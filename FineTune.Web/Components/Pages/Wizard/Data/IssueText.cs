using FineTune.Web.Features.Data;
using Microsoft.Extensions.Localization;

namespace FineTune.Web.Components.Pages.Wizard.Data;

/// <summary>The short chip text of one issue ("與第 3 列重複", "B4 公式").</summary>
public static class IssueText
{
    public static string Short(IStringLocalizer localizer, ValidationIssue issue) => issue.Kind switch
    {
        IssueKind.Duplicate => localizer["IssueShort_Duplicate", issue.OtherRow ?? 0],
        IssueKind.TooLong => localizer["IssueShort_TooLong", issue.Tokens ?? 0],
        IssueKind.Formula or IssueKind.FormulaWithoutValue or IssueKind.ChatTemplateRefused => localizer["IssueShort_" + issue.Kind, issue.Cell ?? string.Empty],
        IssueKind.EmptyTurn or IssueKind.AssistantBeforeUser or IssueKind.UnknownRole => localizer["IssueShort_" + issue.Kind, issue.Turn ?? 0, issue.Cell ?? string.Empty],
        _ => localizer["IssueShort_" + issue.Kind],
    };
}
