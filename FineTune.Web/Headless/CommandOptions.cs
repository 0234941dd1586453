using System.CommandLine;
using System.Globalization;

namespace FineTune.Web.Headless;

/// <summary>
/// Options whose values are read the same on every machine (invariant culture: "2e-4" and "0.05" whatever the locale)
/// and whose bad values get an error that says what to write: "--lr must be a number; got 'fast'."
/// </summary>
internal static class CommandOptions
{
    public static Option<double> Number(string name, string description, double fallback, Func<double, bool>? valid = null, string expected = "a number") =>
        Parsed(name, description, expected, TryNumber(valid), fallback);

    public static Option<double?> OptionalNumber(string name, string description, Func<double, bool>? valid = null, string expected = "a number") =>
        Parsed<double?>(name, description, expected, text => TryNumber(valid)(text) is (true, var v) ? (true, v) : (false, null), null);

    public static Option<int> Integer(string name, string description, int fallback, Func<int, bool>? valid = null, string expected = "a whole number") =>
        Parsed(name, description, expected, TryInteger(valid), fallback);

    public static Option<int?> OptionalInteger(string name, string description, Func<int, bool>? valid = null, string expected = "a whole number") =>
        Parsed<int?>(name, description, expected, text => TryInteger(valid)(text) is (true, var v) ? (true, v) : (false, null), null);

    /// <summary>One of a few words, each standing for a value: "--schedule must be linear, cosine or constant; got 'x'."</summary>
    public static Option<T> Choice<T>(string name, string description, IReadOnlyDictionary<string, T> choices, string fallback)
    {
        string words = choices.Count == 1 ? choices.Keys.Single() : string.Join(", ", choices.Keys.SkipLast(1)) + " or " + choices.Keys.Last();
        var option = Parsed(name, description, words, text => choices.TryGetValue(text, out var v) ? (true, v) : (false, default!), choices[fallback]);
        option.HelpName = string.Join('|', choices.Keys);
        option.DefaultValueFactory = _ => choices[fallback];
        return option;
    }

    /// <summary>A switch: present means on (no value follows it).</summary>
    public static Option<bool> Flag(string name, string description) => new(name) { Description = description, Arity = ArgumentArity.Zero };

    /// <summary>A text value; <paramref name="required"/> makes its absence a usage error.</summary>
    public static Option<string> Text(string name, string description, string helpName, bool required = false) =>
        new(name) { Description = description, HelpName = helpName, Required = required };

    private static Option<T> Parsed<T>(string name, string description, string expected, Func<string, (bool Ok, T Value)> parse, T? fallback)
    {
        var option = new Option<T>(name)
        {
            Description = description,
            CustomParser = result =>
            {
                if (result.Tokens.Count == 0) return fallback!;
                string text = result.Tokens[^1].Value;
                var (ok, value) = parse(text);
                if (ok) return value;
                result.AddError($"{name} must be {expected}; got '{text}'.");
                return fallback!;
            },
        };
        if (fallback is not null) option.DefaultValueFactory = _ => fallback;
        return option;
    }

    private static Func<string, (bool, double)> TryNumber(Func<double, bool>? valid) => text =>
        double.TryParse(text, NumberStyles.Float, CultureInfo.InvariantCulture, out double v) && double.IsFinite(v) && (valid?.Invoke(v) ?? true)
            ? (true, v) : (false, 0);

    private static Func<string, (bool, int)> TryInteger(Func<int, bool>? valid) => text =>
        int.TryParse(text, NumberStyles.Integer, CultureInfo.InvariantCulture, out int v) && (valid?.Invoke(v) ?? true)
            ? (true, v) : (false, 0);
}
