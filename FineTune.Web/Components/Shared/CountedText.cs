using Microsoft.Extensions.Localization;

namespace FineTune.Web.Components.Shared;

/// <summary>
/// A text that states a count. English needs a singular for one ("1 row", not "1 rows"); Chinese has one form. Such a
/// text has a twin "KEY_One" in both resource files (the zh-TW twin repeats the text), chosen when the count is 1.
/// </summary>
public static class CountedText
{
    public static LocalizedString Counted(this IStringLocalizer localizer, string key, int count, params object[] arguments)
    {
        if (count == 1 && localizer[key + "_One", arguments] is { ResourceNotFound: false } one) return one;
        return localizer[key, arguments];
    }

    /// <summary>The common case: the count is the text's only argument.</summary>
    public static LocalizedString Counted(this IStringLocalizer localizer, string key, int count) =>
        localizer.Counted(key, count, [count]);
}
