using System.Globalization;
using System.Text;

namespace FineTune.Engine.Tokenization.Jinja;

/// <summary>Attribute/item access, operators and Python methods of strings, dicts and lists.</summary>
internal static class Builtins
{
    public static object? GetAttr(object? target, string name)
    {
        switch (target)
        {
            case LoopInfo loop: return loop.Get(name);
            case JinjaNamespace ns: return ns.TryGetValue(name, out var nv) ? nv : Undefined.Instance;
            case string s: return (object?)StringMethod(s, name) ?? Undefined.Instance;
            case IDictionary<string, object?> dict:
                // Jinja tries the Python attribute first (dict.items), then the key.
                return (object?)DictMethod(dict, name) ?? (dict.TryGetValue(name, out var v) ? v : Undefined.Instance);
            case List<object?> list: return (object?)ListMethod(list, name) ?? Undefined.Instance;
            default: return Undefined.Instance;
        }
    }

    public static object? GetItem(object? target, object? key)
    {
        switch (target)
        {
            case IDictionary<string, object?> dict:
                return key is string k && dict.TryGetValue(k, out var v) ? v
                    : key is not string && key is not null && dict.TryGetValue(Py.Str(key), out var v2) ? v2
                    : Undefined.Instance;
            case LoopInfo loop when key is string name: return loop.Get(name);
            case System.Collections.IList list when key is long or int or bool:
            {
                long i = Py.ToLong(key);
                if (i < 0) i += list.Count;
                return i >= 0 && i < list.Count ? list[(int)i] : Undefined.Instance;
            }
            case string s when key is long or int:
            {
                var runes = s.EnumerateRunes().ToArray();
                long i = Py.ToLong(key);
                if (i < 0) i += runes.Length;
                return i >= 0 && i < runes.Length ? runes[i].ToString() : Undefined.Instance;
            }
            case string s when key is string attr: return GetAttr(s, attr);
            default: return Undefined.Instance;
        }
    }

    public static object? Slice(object? target, object? start, object? stop, object? step)
    {
        long st = step is null ? 1 : Py.ToLong(step);
        if (st == 0) throw new ChatTemplateException("A slice step cannot be zero.");
        List<object?> items = target switch
        {
            string s => s.EnumerateRunes().Select(r => (object?)r.ToString()).ToList(),
            System.Collections.IList l => l.Cast<object?>().ToList(),
            null or Undefined => [],
            _ => throw new ChatTemplateException($"A {Py.TypeName(target)} cannot be sliced."),
        };
        int n = items.Count;
        long Clamp(object? v, long defaultValue, bool isStart)
        {
            if (v is null) return defaultValue;
            long x = Py.ToLong(v);
            if (x < 0) x += n;
            return st > 0 ? Math.Clamp(x, 0, n) : Math.Clamp(x, -1, n - 1);
        }
        long a = Clamp(start, st > 0 ? 0 : n - 1, true);
        long b = Clamp(stop, st > 0 ? n : -1, false);
        var result = new List<object?>();
        for (long i = a; st > 0 ? i < b : i > b; i += st) result.Add(items[(int)i]);
        return target is string ? string.Concat(result.Cast<string>()) : result;
    }

    public static object? Binary(string op, object? a, object? b)
    {
        if (op == "~") return Py.Str(a) + Py.Str(b);
        if (a is Undefined || b is Undefined)
            throw new ChatTemplateException($"A value used with '{op}' is undefined (a missing variable or key).");
        switch (op)
        {
            case "+":
                if (a is string sa && b is string sb) return sa + sb;
                if (a is System.Collections.IList la && b is System.Collections.IList lb)
                    return la.Cast<object?>().Concat(lb.Cast<object?>()).ToList();
                break;
            case "*":
                if (a is string rs && b is long or int or bool) return string.Concat(Enumerable.Repeat(rs, (int)Math.Max(0, Py.ToLong(b))));
                if (a is System.Collections.IList rl && b is long or int)
                    return Enumerable.Repeat(rl.Cast<object?>(), (int)Math.Max(0, Py.ToLong(b))).SelectMany(x => x).ToList();
                break;
            case "%" when a is string format:
                return PercentFormat(format, b);
        }
        if (!(Py.IsNumber(a) || a is bool) || !(Py.IsNumber(b) || b is bool))
            throw new ChatTemplateException($"Cannot apply '{op}' to {Py.TypeName(a)} and {Py.TypeName(b)}.");
        bool integers = a is not double && b is not double;
        switch (op)
        {
            case "+": return integers ? (object)(Py.ToLong(a) + Py.ToLong(b)) : Py.ToDouble(a) + Py.ToDouble(b);
            case "-": return integers ? (object)(Py.ToLong(a) - Py.ToLong(b)) : Py.ToDouble(a) - Py.ToDouble(b);
            case "*": return integers ? (object)(Py.ToLong(a) * Py.ToLong(b)) : Py.ToDouble(a) * Py.ToDouble(b);
            case "/":
                if (Py.ToDouble(b) == 0) throw new ChatTemplateException("Division by zero in the chat template.");
                return Py.ToDouble(a) / Py.ToDouble(b);
            case "//":
                if (Py.ToDouble(b) == 0) throw new ChatTemplateException("Division by zero in the chat template.");
                return integers ? (object)FloorDiv(Py.ToLong(a), Py.ToLong(b)) : Math.Floor(Py.ToDouble(a) / Py.ToDouble(b));
            case "%":
                if (Py.ToDouble(b) == 0) throw new ChatTemplateException("Modulo by zero in the chat template.");
                if (integers) { long m = Py.ToLong(a) % Py.ToLong(b); return m != 0 && (m < 0) != (Py.ToLong(b) < 0) ? m + Py.ToLong(b) : m; }
                { double m = Py.ToDouble(a) % Py.ToDouble(b); return m != 0 && (m < 0) != (Py.ToDouble(b) < 0) ? m + Py.ToDouble(b) : m; }
            case "**":
                return integers && Py.ToLong(b) >= 0 ? (object)(long)Math.Pow(Py.ToLong(a), Py.ToLong(b)) : Math.Pow(Py.ToDouble(a), Py.ToDouble(b));
        }
        throw new ChatTemplateException($"Unknown operator '{op}'.");
    }

    private static long FloorDiv(long a, long b)
    {
        long q = a / b;
        return (a % b != 0) && ((a < 0) != (b < 0)) ? q - 1 : q;
    }

    /// <summary>"%s" / "%d" formatting, the bit of Python's % operator templates use.</summary>
    private static string PercentFormat(string format, object? args)
    {
        var values = args is JinjaTuple t ? t.ToList() : [args];
        var sb = new StringBuilder();
        int next = 0;
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 >= format.Length) { sb.Append(format[i]); continue; }
            char spec = format[++i];
            if (spec == '%') { sb.Append('%'); continue; }
            object? v = next < values.Count ? values[next++] : throw new ChatTemplateException("Not enough values for % formatting.");
            sb.Append(spec switch { 'd' or 'i' => Py.ToLong(v).ToString(CultureInfo.InvariantCulture), 'r' => Py.Repr(v), _ => Py.Str(v) });
        }
        return sb.ToString();
    }

    public static object? Range(IReadOnlyList<object?> args, IReadOnlyDictionary<string, object?> _)
    {
        long start = 0, stop, step = 1;
        switch (args.Count)
        {
            case 1: stop = Py.ToLong(args[0]); break;
            case 2: start = Py.ToLong(args[0]); stop = Py.ToLong(args[1]); break;
            case 3: start = Py.ToLong(args[0]); stop = Py.ToLong(args[1]); step = Py.ToLong(args[2]); break;
            default: throw new ChatTemplateException("range() takes 1 to 3 arguments.");
        }
        if (step == 0) throw new ChatTemplateException("range() step cannot be zero.");
        var result = new List<object?>();
        for (long i = start; step > 0 ? i < stop : i > stop; i += step) result.Add(i);
        return result;
    }

    private static JinjaCallable Method(Func<IReadOnlyList<object?>, IReadOnlyDictionary<string, object?>, object?> f) => (a, k) => f(a, k);

    private static string? OptionalString(IReadOnlyList<object?> args, int index) =>
        index < args.Count && args[index] is not null and not Undefined ? Py.Str(args[index]) : null;

    private static JinjaCallable? StringMethod(string s, string name) => name switch
    {
        "strip" => Method((a, _) => OptionalString(a, 0) is { } chars ? s.Trim(chars.ToCharArray()) : s.Trim()),
        "lstrip" => Method((a, _) => OptionalString(a, 0) is { } chars ? s.TrimStart(chars.ToCharArray()) : s.TrimStart()),
        "rstrip" => Method((a, _) => OptionalString(a, 0) is { } chars ? s.TrimEnd(chars.ToCharArray()) : s.TrimEnd()),
        "upper" => Method((_, _) => s.ToUpperInvariant()),
        "lower" => Method((_, _) => s.ToLowerInvariant()),
        "title" => Method((_, _) => Filters.Title(s)),
        "capitalize" => Method((_, _) => s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant()),
        "startswith" => Method((a, _) => a.Count > 0 && a[0] is System.Collections.IList options
            ? options.Cast<object?>().Any(o => s.StartsWith(Py.Str(o), StringComparison.Ordinal))
            : s.StartsWith(Py.Str(a[0]), StringComparison.Ordinal)),
        "endswith" => Method((a, _) => a.Count > 0 && a[0] is System.Collections.IList options
            ? options.Cast<object?>().Any(o => s.EndsWith(Py.Str(o), StringComparison.Ordinal))
            : s.EndsWith(Py.Str(a[0]), StringComparison.Ordinal)),
        "split" => Method((a, k) => Split(s, OptionalString(a, 0) ?? (k.TryGetValue("sep", out var sep) && sep is string ss ? ss : null),
            a.Count > 1 ? Py.ToLong(a[1]) : k.TryGetValue("maxsplit", out var m) ? Py.ToLong(m) : -1)),
        "rsplit" => Method((a, _) => RSplit(s, OptionalString(a, 0), a.Count > 1 ? Py.ToLong(a[1]) : -1)),
        "splitlines" => Method((_, _) => s.Split('\n').Select(l => (object?)l.TrimEnd('\r')).ToList() is var lines && s.EndsWith('\n') ? lines.SkipLast(1).ToList() : lines),
        "replace" => Method((a, _) => a.Count > 2
            ? ReplaceCount(s, Py.Str(a[0]), Py.Str(a[1]), Py.ToLong(a[2]))
            : s.Replace(Py.Str(a[0]), Py.Str(a[1]), StringComparison.Ordinal)),
        "find" => Method((a, _) => (long)s.IndexOf(Py.Str(a[0]), StringComparison.Ordinal)),
        "count" => Method((a, _) => (long)CountOccurrences(s, Py.Str(a[0]))),
        "join" => Method((a, _) => string.Join(s, Py.Iterate(a[0]).Select(Py.Str))),
        "isdigit" => Method((_, _) => s.Length > 0 && s.All(char.IsDigit)),
        "format" => Method((a, k) => PythonFormat(s, a, k)),
        _ => null,
    };

    private static JinjaCallable? DictMethod(IDictionary<string, object?> d, string name) => name switch
    {
        "items" => Method((_, _) => d.Select(p => (object?)new JinjaTuple([p.Key, p.Value])).ToList()),
        "keys" => Method((_, _) => d.Keys.Select(k => (object?)k).ToList()),
        "values" => Method((_, _) => d.Values.ToList()),
        "get" => Method((a, _) => a.Count > 0 && a[0] is string k && d.TryGetValue(k, out var v) ? v : a.Count > 1 ? a[1] : null),
        _ => null,
    };

    private static JinjaCallable? ListMethod(List<object?> list, string name) => name switch
    {
        "append" => Method((a, _) => { list.Add(a.Count > 0 ? a[0] : null); return null; }),
        "index" => Method((a, _) => (long)list.FindIndex(x => Py.Equals(x, a[0]))),
        "count" => Method((a, _) => (long)list.Count(x => Py.Equals(x, a[0]))),
        _ => null,
    };

    private static List<object?> Split(string s, string? sep, long maxSplit)
    {
        if (sep is null)
        {
            // Python: runs of whitespace, no empty strings.
            var parts = new List<object?>();
            int i = 0;
            while (i < s.Length)
            {
                while (i < s.Length && char.IsWhiteSpace(s[i])) i++;
                if (i >= s.Length) break;
                if (maxSplit >= 0 && parts.Count == maxSplit) { parts.Add(s[i..].TrimEnd()); break; }
                int start = i;
                while (i < s.Length && !char.IsWhiteSpace(s[i])) i++;
                parts.Add(s[start..i]);
            }
            return parts;
        }
        if (sep.Length == 0) throw new ChatTemplateException("split() separator cannot be empty.");
        return (maxSplit >= 0 ? s.Split(sep, (int)maxSplit + 1) : s.Split(sep)).Select(p => (object?)p).ToList();
    }

    private static List<object?> RSplit(string s, string? sep, long maxSplit)
    {
        if (sep is null || maxSplit < 0) return Split(s, sep, maxSplit);
        var parts = new List<object?>();
        string rest = s;
        while (parts.Count < maxSplit)
        {
            int at = rest.LastIndexOf(sep, StringComparison.Ordinal);
            if (at < 0) break;
            parts.Insert(0, rest[(at + sep.Length)..]);
            rest = rest[..at];
        }
        parts.Insert(0, rest);
        return parts;
    }

    private static string ReplaceCount(string s, string old, string replacement, long count)
    {
        if (count < 0) return s.Replace(old, replacement, StringComparison.Ordinal);
        var sb = new StringBuilder();
        int pos = 0;
        for (long done = 0; done < count; done++)
        {
            int at = s.IndexOf(old, pos, StringComparison.Ordinal);
            if (at < 0 || old.Length == 0) break;
            sb.Append(s, pos, at - pos).Append(replacement);
            pos = at + old.Length;
        }
        return sb.Append(s, pos, s.Length - pos).ToString();
    }

    private static int CountOccurrences(string s, string sub)
    {
        if (sub.Length == 0) return s.Length + 1;
        int n = 0;
        for (int at = s.IndexOf(sub, StringComparison.Ordinal); at >= 0; at = s.IndexOf(sub, at + sub.Length, StringComparison.Ordinal)) n++;
        return n;
    }

    /// <summary>"{}"/"{0}"/"{name}" replacement fields of str.format, without format specs.</summary>
    private static string PythonFormat(string format, IReadOnlyList<object?> args, IReadOnlyDictionary<string, object?> kwargs)
    {
        var sb = new StringBuilder();
        int auto = 0;
        for (int i = 0; i < format.Length; i++)
        {
            char c = format[i];
            if (c == '{' && i + 1 < format.Length && format[i + 1] == '{') { sb.Append('{'); i++; continue; }
            if (c == '}' && i + 1 < format.Length && format[i + 1] == '}') { sb.Append('}'); i++; continue; }
            if (c != '{') { sb.Append(c); continue; }
            int close = format.IndexOf('}', i);
            if (close < 0) throw new ChatTemplateException("Unclosed '{' in str.format.");
            string field = format[(i + 1)..close].Split(':')[0];
            object? value = field.Length == 0 ? args[auto++]
                : int.TryParse(field, out int index) ? args[index]
                : kwargs.TryGetValue(field, out var kv) ? kv : Undefined.Instance;
            sb.Append(Py.Str(value));
            i = close;
        }
        return sb.ToString();
    }

    /// <summary>Python's datetime.strftime for the codes templates use (Llama 3.1/3.2 write "26 Jul 2024").</summary>
    public static string Strftime(DateTime now, string format)
    {
        var sb = new StringBuilder();
        for (int i = 0; i < format.Length; i++)
        {
            if (format[i] != '%' || i + 1 >= format.Length) { sb.Append(format[i]); continue; }
            char code = format[++i];
            bool noPad = false;
            if (code == '-' && i + 1 < format.Length) { noPad = true; code = format[++i]; }
            string two(int v) => noPad ? v.ToString(CultureInfo.InvariantCulture) : v.ToString("00", CultureInfo.InvariantCulture);
            sb.Append(code switch
            {
                'd' => two(now.Day),
                'm' => two(now.Month),
                'Y' => now.Year.ToString(CultureInfo.InvariantCulture),
                'y' => two(now.Year % 100),
                'H' => two(now.Hour),
                'I' => two(now.Hour % 12 == 0 ? 12 : now.Hour % 12),
                'M' => two(now.Minute),
                'S' => two(now.Second),
                'p' => now.Hour < 12 ? "AM" : "PM",
                'b' => now.ToString("MMM", CultureInfo.InvariantCulture),
                'B' => now.ToString("MMMM", CultureInfo.InvariantCulture),
                'a' => now.ToString("ddd", CultureInfo.InvariantCulture),
                'A' => now.ToString("dddd", CultureInfo.InvariantCulture),
                'j' => now.DayOfYear.ToString(noPad ? "0" : "000", CultureInfo.InvariantCulture),
                '%' => "%",
                _ => "%" + code,
            });
        }
        return sb.ToString();
    }
}
