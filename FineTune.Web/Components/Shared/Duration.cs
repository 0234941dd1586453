using Microsoft.Extensions.Localization;

namespace FineTune.Web.Components.Shared;

/// <summary>"1 小時 5 分" / "1 h 5 min": durations for people.</summary>
public static class Duration
{
    public static string Format(IStringLocalizer localizer, TimeSpan? span)
    {
        if (span is not { } t) return "—";
        if (t.TotalHours >= 1) return localizer["Duration_HoursMinutes", (int)t.TotalHours, t.Minutes];
        if (t.TotalMinutes >= 1) return localizer["Duration_MinutesSeconds", t.Minutes, t.Seconds];
        return localizer["Duration_Seconds", Math.Max(0, (int)Math.Round(t.TotalSeconds))];
    }
}
