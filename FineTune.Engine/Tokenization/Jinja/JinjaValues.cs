using System.Globalization;
using System.Text;

namespace FineTune.Engine.Tokenization.Jinja;

/// <summary>Jinja's undefined value: renders as "", is falsy, iterates as empty.</summary>
internal sealed class Undefined
{
    public static readonly Undefined Instance = new();
    private Undefined() { }
    public override string ToString() => "";
}

/// <summary>namespace(...): the one object whose attributes a set statement may assign (survives loop scopes).</summary>
internal sealed class JinjaNamespace : Dictionary<string, object?>
{
    public JinjaNamespace() : base(StringComparer.Ordinal) { }
}

/// <summary>A callable value: functions, bound string/dict methods, macros.</summary>
internal delegate object? JinjaCallable(IReadOnlyList<object?> args, IReadOnlyDictionary<string, object?> kwargs);

/// <summary>Tuples are lists that print with parentheses.</summary>
internal sealed class JinjaTuple(IEnumerable<object?> items) : List<object?>(items);

/// <summary>Python semantics for the values templates use: None, bool, long, double, string, list, dict.</summary>
internal static class Py
{
    public static bool Truthy(object? v) => v switch
    {
        null or Undefined => false,
        bool b => b,
        long l => l != 0,
        int i => i != 0,
        double d => d != 0,
        string s => s.Length > 0,
        System.Collections.ICollection c => c.Count > 0,
        _ => true,
    };

    public static bool IsNumber(object? v) => v is long or int or double;

    public static double ToDouble(object? v) => v switch
    {
        long l => l,
        int i => i,
        double d => d,
        bool b => b ? 1 : 0,
        _ => throw new ChatTemplateException($"Expected a number, got {TypeName(v)}."),
    };

    public static long ToLong(object? v) => v switch
    {
        long l => l,
        int i => i,
        bool b => b ? 1 : 0,
        double d => (long)d,
        _ => throw new ChatTemplateException($"Expected an integer, got {TypeName(v)}."),
    };

    public static string TypeName(object? v) => v switch
    {
        null => "None",
        Undefined => "undefined",
        bool => "bool",
        long or int => "int",
        double => "float",
        string => "str",
        JinjaTuple => "tuple",
        System.Collections.IList => "list",
        System.Collections.IDictionary => "dict",
        _ => v.GetType().Name,
    };

    /// <summary>Python str(): what {{ x }} prints.</summary>
    public static string Str(object? v) => v switch
    {
        null => "None",
        Undefined => "",
        string s => s,
        bool b => b ? "True" : "False",
        long or int => Convert.ToString(v, CultureInfo.InvariantCulture)!,
        double d => FloatRepr(d),
        _ => Repr(v),
    };

    /// <summary>Python repr(), used for lists and dicts printed whole.</summary>
    public static string Repr(object? v)
    {
        switch (v)
        {
            case string s:
            {
                char quote = s.Contains('\'') && !s.Contains('"') ? '"' : '\'';
                var sb = new StringBuilder().Append(quote);
                foreach (char c in s)
                {
                    sb.Append(c switch
                    {
                        '\\' => "\\\\",
                        '\n' => "\\n",
                        '\r' => "\\r",
                        '\t' => "\\t",
                        _ when c == quote => "\\" + c,
                        _ when c < 0x20 || c == 0x7f => $"\\x{(int)c:x2}",
                        _ => c.ToString(),
                    });
                }
                return sb.Append(quote).ToString();
            }
            case JinjaTuple t:
                return t.Count == 1 ? $"({Repr(t[0])},)" : "(" + string.Join(", ", t.Select(Repr)) + ")";
            case System.Collections.IList list:
                return "[" + string.Join(", ", list.Cast<object?>().Select(Repr)) + "]";
            case IDictionary<string, object?> dict:
                return "{" + string.Join(", ", dict.Select(p => Repr(p.Key) + ": " + Repr(p.Value))) + "}";
            default:
                return Str(v);
        }
    }

    public static string FloatRepr(double d)
    {
        if (double.IsPositiveInfinity(d)) return "inf";
        if (double.IsNegativeInfinity(d)) return "-inf";
        if (double.IsNaN(d)) return "nan";
        string r = d.ToString("R", CultureInfo.InvariantCulture);
        if (r.Contains('E'))
        {
            // Python: 1e-05, 1e+20
            var parts = r.Split('E');
            int exp = int.Parse(parts[1], CultureInfo.InvariantCulture);
            return $"{parts[0]}e{(exp < 0 ? "-" : "+")}{Math.Abs(exp):00}";
        }
        return r.Contains('.') ? r : r + ".0";
    }

    public static new bool Equals(object? a, object? b)
    {
        if (a is Undefined || b is Undefined) return a is Undefined && b is Undefined;
        if (a is null || b is null) return a is null && b is null;
        if (IsNumber(a) && IsNumber(b) || a is bool && IsNumber(b) || IsNumber(a) && b is bool)
            return ToDouble(a) == ToDouble(b);
        if (a is string sa && b is string sb) return string.Equals(sa, sb, StringComparison.Ordinal);
        if (a is System.Collections.IList la && b is System.Collections.IList lb)
            return la.Count == lb.Count && Enumerable.Range(0, la.Count).All(i => Equals(la[i], lb[i]));
        if (a is IDictionary<string, object?> da && b is IDictionary<string, object?> db)
            return da.Count == db.Count && da.All(p => db.TryGetValue(p.Key, out var v) && Equals(p.Value, v));
        return a.Equals(b);
    }

    public static int Compare(object? a, object? b)
    {
        if ((IsNumber(a) || a is bool) && (IsNumber(b) || b is bool)) return ToDouble(a).CompareTo(ToDouble(b));
        if (a is string sa && b is string sb) return string.CompareOrdinal(sa, sb);
        if (a is System.Collections.IList la && b is System.Collections.IList lb)
        {
            for (int i = 0; i < Math.Min(la.Count, lb.Count); i++)
            {
                int c = Compare(la[i], lb[i]);
                if (c != 0) return c;
            }
            return la.Count.CompareTo(lb.Count);
        }
        throw new ChatTemplateException($"Cannot compare {TypeName(a)} with {TypeName(b)}.");
    }

    public static bool Contains(object? container, object? item) => container switch
    {
        string s => item is string sub ? s.Contains(sub, StringComparison.Ordinal) : throw new ChatTemplateException($"'in <string>' needs a string, got {TypeName(item)}."),
        IDictionary<string, object?> d => item is string key && d.ContainsKey(key),
        System.Collections.IList list => list.Cast<object?>().Any(x => Equals(x, item)),
        Undefined or null => false,
        _ => throw new ChatTemplateException($"Cannot use 'in' with {TypeName(container)}."),
    };

    /// <summary>What a for loop walks: list items, dict keys, string characters; undefined/None as empty.</summary>
    public static List<object?> Iterate(object? v) => v switch
    {
        null or Undefined => [],
        string s => s.EnumerateRunes().Select(r => (object?)r.ToString()).ToList(),
        IDictionary<string, object?> d => d.Keys.Select(k => (object?)k).ToList(),
        System.Collections.IEnumerable e => e.Cast<object?>().ToList(),
        _ => throw new ChatTemplateException($"A {TypeName(v)} cannot be iterated."),
    };

    public static int Length(object? v) => v switch
    {
        string s => s.EnumerateRunes().Count(), // Python counts code points
        System.Collections.ICollection c => c.Count,
        Undefined => 0,
        _ => throw new ChatTemplateException($"A {TypeName(v)} has no length."),
    };
}
