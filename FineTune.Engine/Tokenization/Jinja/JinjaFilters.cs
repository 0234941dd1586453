using System.Globalization;
using System.Text;

namespace FineTune.Engine.Tokenization.Jinja;

/// <summary>Jinja's built-in filters and tests that chat templates use, plus HF's tojson.</summary>
internal static class Filters
{
    public static object? Apply(string name, object? value, IReadOnlyList<object?> args, IReadOnlyDictionary<string, object?> kwargs)
    {
        object? Arg(int index, string key, object? fallback = null) =>
            index >= 0 && index < args.Count ? args[index] : kwargs.TryGetValue(key, out var v) ? v : fallback;

        switch (name)
        {
            case "trim":
                return Arg(0, "chars") is string chars ? Py.Str(value).Trim(chars.ToCharArray()) : Py.Str(value).Trim();
            case "tojson":
                return ToJson(value, Arg(0, "indent") is { } indent and not Undefined ? (int)Py.ToLong(indent) : null,
                    Py.Truthy(Arg(-1, "sort_keys")), Arg(-1, "separators"));
            case "length" or "count":
                return (long)Py.Length(value);
            case "upper": return Py.Str(value).ToUpperInvariant();
            case "lower": return Py.Str(value).ToLowerInvariant();
            case "title": return Title(Py.Str(value));
            case "capitalize":
            {
                string s = Py.Str(value);
                return s.Length == 0 ? s : char.ToUpperInvariant(s[0]) + s[1..].ToLowerInvariant();
            }
            case "default" or "d":
            {
                bool boolean = Py.Truthy(Arg(1, "boolean", false));
                bool useDefault = value is Undefined || (boolean && !Py.Truthy(value));
                return useDefault ? Arg(0, "default_value", "") : value;
            }
            case "join":
            {
                string sep = Arg(0, "d") is { } d and not Undefined ? Py.Str(d) : "";
                var items = Py.Iterate(value);
                if (kwargs.TryGetValue("attribute", out var attr)) items = items.Select(i => Builtins.GetItem(i, attr)).ToList();
                return string.Join(sep, items.Select(Py.Str));
            }
            case "first": return Py.Iterate(value) is { Count: > 0 } f ? f[0] : Undefined.Instance;
            case "last": return Py.Iterate(value) is { Count: > 0 } l ? l[^1] : Undefined.Instance;
            case "list": return Py.Iterate(value);
            case "string": return Py.Str(value);
            case "safe": return value;
            case "escape" or "e":
                return Py.Str(value).Replace("&", "&amp;").Replace("<", "&lt;").Replace(">", "&gt;").Replace("\"", "&#34;").Replace("'", "&#39;");
            case "int":
                return value switch
                {
                    long or int or bool => (object)Py.ToLong(value),
                    double dv => (long)dv,
                    string s when long.TryParse(s.Trim(), NumberStyles.Integer, CultureInfo.InvariantCulture, out long parsed) => parsed,
                    string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double pd) => (long)pd,
                    _ => Arg(0, "default", 0L),
                };
            case "float":
                return value switch
                {
                    long or int or double or bool => (object)Py.ToDouble(value),
                    string s when double.TryParse(s.Trim(), NumberStyles.Float, CultureInfo.InvariantCulture, out double pd) => pd,
                    _ => Arg(0, "default", 0.0),
                };
            case "abs": return value is double ad ? (object)Math.Abs(ad) : Math.Abs(Py.ToLong(value));
            case "round":
            {
                int precision = (int)Py.ToLong(Arg(0, "precision", 0L));
                return Math.Round(Py.ToDouble(value), precision, MidpointRounding.ToEven);
            }
            case "replace":
            {
                string s = Py.Str(value), old = Py.Str(Arg(0, "old")), replacement = Py.Str(Arg(1, "new"));
                return s.Replace(old, replacement, StringComparison.Ordinal);
            }
            case "items":
                return value is IDictionary<string, object?> dict
                    ? dict.Select(p => (object?)new JinjaTuple([p.Key, p.Value])).ToList()
                    : value is Undefined ? new List<object?>() : throw new ChatTemplateException($"items needs a dict, got {Py.TypeName(value)}.");
            case "dictsort":
                return value is IDictionary<string, object?> sortable
                    ? sortable.OrderBy(p => p.Key, StringComparer.OrdinalIgnoreCase).Select(p => (object?)new JinjaTuple([p.Key, p.Value])).ToList()
                    : throw new ChatTemplateException($"dictsort needs a dict, got {Py.TypeName(value)}.");
            case "reverse":
                return value is string rs ? string.Concat(rs.EnumerateRunes().Reverse().Select(r => r.ToString())) : Py.Iterate(value).AsEnumerable().Reverse().ToList();
            case "sort":
            {
                var items = Py.Iterate(value);
                object? attribute = kwargs.GetValueOrDefault("attribute");
                object? Key(object? x) => attribute is null ? x : Builtins.GetItem(x, attribute);
                var sorted = items.OrderBy(Key, Comparer<object?>.Create(Py.Compare)).ToList();
                if (Py.Truthy(Arg(0, "reverse", false))) sorted.Reverse();
                return sorted;
            }
            case "unique":
            {
                var result = new List<object?>();
                foreach (var item in Py.Iterate(value)) if (!result.Any(r => Py.Equals(r, item))) result.Add(item);
                return result;
            }
            case "sum": return Py.Iterate(value).Aggregate((object?)0L, (acc, x) => Builtins.Binary("+", acc, x));
            case "min": return Py.Iterate(value).OrderBy(x => x, Comparer<object?>.Create(Py.Compare)).FirstOrDefault(Undefined.Instance);
            case "max": return Py.Iterate(value).OrderBy(x => x, Comparer<object?>.Create(Py.Compare)).LastOrDefault(Undefined.Instance);
            case "map":
            {
                var items = Py.Iterate(value);
                if (kwargs.TryGetValue("attribute", out var attr))
                    return items.Select(i => Builtins.GetItem(i, attr) is Undefined && kwargs.TryGetValue("default", out var def) ? def : Builtins.GetItem(i, attr)).ToList();
                if (args.Count > 0 && args[0] is string filter)
                    return items.Select(i => Apply(filter, i, args.Skip(1).ToList(), new Dictionary<string, object?>())).ToList();
                throw new ChatTemplateException("map needs attribute= or a filter name.");
            }
            case "selectattr" or "rejectattr":
            {
                bool keep = name == "selectattr";
                object? attr = Arg(0, "attribute");
                return Py.Iterate(value).Where(item =>
                {
                    var v = Builtins.GetItem(item, attr);
                    bool passes = args.Count > 1 ? Test(Py.Str(args[1]), v, args.Skip(2).ToList()) : Py.Truthy(v);
                    return passes == keep;
                }).ToList();
            }
            case "select" or "reject":
            {
                bool keep = name == "select";
                return Py.Iterate(value).Where(item =>
                    (args.Count > 0 ? Test(Py.Str(args[0]), item, args.Skip(1).ToList()) : Py.Truthy(item)) == keep).ToList();
            }
            case "indent":
            {
                int width = (int)Py.ToLong(Arg(0, "width", 4L));
                bool first = Py.Truthy(Arg(1, "first", false)), blank = Py.Truthy(Arg(2, "blank", false));
                string pad = new(' ', width);
                var lines = Py.Str(value).Split('\n');
                var sb = new StringBuilder();
                for (int i = 0; i < lines.Length; i++)
                {
                    if (i > 0) sb.Append('\n');
                    bool indentThis = (i > 0 || first) && (blank || lines[i].Trim().Length > 0);
                    sb.Append(indentThis ? pad : "").Append(lines[i]);
                }
                return sb.ToString();
            }
            case "wordcount": return (long)Py.Str(value).Split((char[]?)null, StringSplitOptions.RemoveEmptyEntries).Length;
            case "batch" or "slice":
                throw new ChatTemplateException($"The filter '{name}' is not supported by FineTune's template renderer.");
            default:
                throw new ChatTemplateException($"The chat template uses the filter '{name}', which FineTune's template renderer does not know.");
        }
    }

    public static bool Test(string name, object? value, IReadOnlyList<object?> args) => name switch
    {
        "defined" => value is not Undefined,
        "undefined" => value is Undefined,
        "none" => value is null,
        "string" => value is string,
        "number" => Py.IsNumber(value),
        "integer" => value is long or int,
        "float" => value is double,
        "boolean" => value is bool,
        "true" => value is true,
        "false" => value is false,
        "mapping" => value is IDictionary<string, object?>,
        "iterable" => value is string or System.Collections.IEnumerable,
        "sequence" => value is string or System.Collections.IList or IDictionary<string, object?>,
        "callable" => value is JinjaCallable,
        "odd" => Py.ToLong(value) % 2 != 0,
        "even" => Py.ToLong(value) % 2 == 0,
        "divisibleby" => Py.ToLong(value) % Py.ToLong(args[0]) == 0,
        "eq" or "equalto" or "==" => Py.Equals(value, args[0]),
        "ne" or "!=" => !Py.Equals(value, args[0]),
        "lt" or "lessthan" or "<" => Py.Compare(value, args[0]) < 0,
        "gt" or "greaterthan" or ">" => Py.Compare(value, args[0]) > 0,
        "le" or "<=" => Py.Compare(value, args[0]) <= 0,
        "ge" or ">=" => Py.Compare(value, args[0]) >= 0,
        "in" => Py.Contains(args[0], value),
        "sameas" => ReferenceEquals(value, args[0]) || (value is bool a && args[0] is bool b && a == b) || (value is null && args[0] is null),
        "lower" => value is string l && l == l.ToLowerInvariant(),
        "upper" => value is string u && u == u.ToUpperInvariant(),
        _ => throw new ChatTemplateException($"The chat template uses the test '{name}', which FineTune's template renderer does not know."),
    };

    public static string Title(string s)
    {
        var sb = new StringBuilder(s.Length);
        bool previousIsLetter = false;
        foreach (char c in s)
        {
            sb.Append(previousIsLetter ? char.ToLowerInvariant(c) : char.ToUpperInvariant(c));
            previousIsLetter = char.IsLetter(c);
        }
        return sb.ToString();
    }

    /// <summary>HF's tojson: json.dumps(x, ensure_ascii=False, indent=indent, separators=..., sort_keys=...).</summary>
    public static string ToJson(object? value, int? indent = null, bool sortKeys = false, object? separators = null)
    {
        string itemSep = indent is null ? ", " : ",", keySep = ": ";
        if (separators is System.Collections.IList { Count: 2 } seps) { itemSep = Py.Str(seps[0]); keySep = Py.Str(seps[1]); }
        var sb = new StringBuilder();
        Write(value, 0);
        return sb.ToString();

        void NewLine(int depth)
        {
            if (indent is null) return;
            sb.Append('\n').Append(' ', indent.Value * depth);
        }

        void Write(object? v, int depth)
        {
            switch (v)
            {
                case null or Undefined: sb.Append("null"); break;
                case bool b: sb.Append(b ? "true" : "false"); break;
                case long or int: sb.Append(Convert.ToString(v, CultureInfo.InvariantCulture)); break;
                case double d:
                    sb.Append(double.IsNaN(d) ? "NaN" : double.IsPositiveInfinity(d) ? "Infinity" : double.IsNegativeInfinity(d) ? "-Infinity" : Py.FloatRepr(d));
                    break;
                case string s: WriteString(s); break;
                case IDictionary<string, object?> dict:
                {
                    if (dict.Count == 0) { sb.Append("{}"); break; }
                    sb.Append('{');
                    var pairs = sortKeys ? dict.OrderBy(p => p.Key, StringComparer.Ordinal).ToList() : dict.ToList();
                    for (int i = 0; i < pairs.Count; i++)
                    {
                        if (i > 0) sb.Append(itemSep);
                        NewLine(depth + 1);
                        WriteString(pairs[i].Key);
                        sb.Append(keySep);
                        Write(pairs[i].Value, depth + 1);
                    }
                    NewLine(depth);
                    sb.Append('}');
                    break;
                }
                case System.Collections.IList list:
                {
                    if (list.Count == 0) { sb.Append("[]"); break; }
                    sb.Append('[');
                    for (int i = 0; i < list.Count; i++)
                    {
                        if (i > 0) sb.Append(itemSep);
                        NewLine(depth + 1);
                        Write(list[i], depth + 1);
                    }
                    NewLine(depth);
                    sb.Append(']');
                    break;
                }
                default: WriteString(Py.Str(v)); break;
            }
        }

        void WriteString(string s)
        {
            sb.Append('"');
            foreach (char c in s)
            {
                switch (c)
                {
                    case '"': sb.Append("\\\""); break;
                    case '\\': sb.Append("\\\\"); break;
                    case '\n': sb.Append("\\n"); break;
                    case '\r': sb.Append("\\r"); break;
                    case '\t': sb.Append("\\t"); break;
                    case '\b': sb.Append("\\b"); break;
                    case '\f': sb.Append("\\f"); break;
                    default:
                        if (c < 0x20) sb.Append("\\u").Append(((int)c).ToString("x4", CultureInfo.InvariantCulture));
                        else sb.Append(c);
                        break;
                }
            }
            sb.Append('"');
        }
    }
}
