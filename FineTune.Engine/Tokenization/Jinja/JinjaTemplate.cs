using System.Globalization;
using System.Text;

namespace FineTune.Engine.Tokenization.Jinja;

/// <summary>
/// The part of Jinja2 that Hugging Face chat templates use, rendered the way transformers renders them
/// (trim_blocks, lstrip_blocks, loop controls, tojson with ensure_ascii=False, raise_exception, strftime_now).
/// No .NET Jinja package is available, so this is a small interpreter checked against jinja2 3.1 renders.
/// Values are Python-like: null (None), bool, long, double, string, List&lt;object?&gt;, Dictionary&lt;string, object?&gt;.
/// </summary>
public sealed class JinjaTemplate
{
    private readonly IReadOnlyList<Node> _nodes;

    public JinjaTemplate(string source)
    {
        ArgumentNullException.ThrowIfNull(source);
        // Jinja drops one trailing newline of the source (keep_trailing_newline=False).
        if (source.EndsWith('\n')) source = source[..^(source.EndsWith("\r\n") ? 2 : 1)];
        _nodes = JinjaParser.Parse(source);
    }

    /// <summary>The clock strftime_now reads (tests pin it).</summary>
    public Func<DateTime> Now { get; init; } = () => DateTime.Now;

    /// <summary>True when the template has {% generation %} blocks (HF's markers of what the assistant writes).</summary>
    public bool HasGenerationBlocks => ContainsGeneration(_nodes);

    public string Render(IReadOnlyDictionary<string, object?> variables) => Render(variables, Now);

    /// <param name="now">The clock for strftime_now in this render.</param>
    public string Render(IReadOnlyDictionary<string, object?> variables, Func<DateTime> now) => RenderTracked(variables, now).Text;

    /// <summary>
    /// Renders and reports where each {% generation %} block's text landed, as transformers' AssistantTracker does:
    /// (start, end) character offsets into the result, start being the length of the top-level output when the block
    /// finished rendering (blocks inside macros or set-captures are placed the same way, so the same way wrong).
    /// </summary>
    public (string Text, IReadOnlyList<(int Start, int End)> GenerationSpans) RenderTracked(IReadOnlyDictionary<string, object?> variables, Func<DateTime> now)
    {
        var globals = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["range"] = (JinjaCallable)Builtins.Range,
            ["namespace"] = (JinjaCallable)((_, kwargs) =>
            {
                var ns = new JinjaNamespace();
                foreach (var (k, v) in kwargs) ns[k] = v;
                return ns;
            }),
            ["dict"] = (JinjaCallable)((_, kwargs) => new Dictionary<string, object?>(kwargs, StringComparer.Ordinal)),
            ["raise_exception"] = (JinjaCallable)((args, _) =>
                throw new ChatTemplateException("The chat template refused the messages: " + (args.Count > 0 ? Py.Str(args[0]) : "(no reason given)"))),
            ["strftime_now"] = (JinjaCallable)((args, _) => Builtins.Strftime(now(), args.Count > 0 ? Py.Str(args[0]) : "")),
        };
        foreach (var (k, v) in variables) globals[k] = Normalize(v);
        var output = new StringBuilder();
        var spans = new List<(int Start, int End)>();
        var context = new RenderContext([globals], output, spans);
        context.ExecuteBody(_nodes, output);
        return (output.ToString(), spans);
    }

    private static bool ContainsGeneration(IEnumerable<Node> nodes) => nodes.Any(node => node switch
    {
        GenerationNode => true,
        IfNode i => i.Branches.Any(b => ContainsGeneration(b.Body)) || ContainsGeneration(i.Else),
        ForNode f => ContainsGeneration(f.Body) || ContainsGeneration(f.Else),
        SetBlockNode s => ContainsGeneration(s.Body),
        MacroNode m => ContainsGeneration(m.Body),
        BlockNode b => ContainsGeneration(b.Body),
        _ => false,
    });

    /// <summary>Turns caller values (ints, arrays, read-only collections) into the value kinds the interpreter knows.</summary>
    internal static object? Normalize(object? value) => value switch
    {
        null or string or bool or long or double or Undefined or JinjaCallable => value,
        int i => (long)i,
        float f => (double)f,
        decimal m => (double)m,
        IDictionary<string, object?> d => d.ToDictionary(p => p.Key, p => Normalize(p.Value), StringComparer.Ordinal),
        IReadOnlyDictionary<string, object?> d => d.ToDictionary(p => p.Key, p => Normalize(p.Value), StringComparer.Ordinal),
        IReadOnlyDictionary<string, string> d => d.ToDictionary(p => p.Key, p => (object?)p.Value, StringComparer.Ordinal),
        System.Collections.IEnumerable e => e.Cast<object?>().Select(Normalize).ToList(),
        _ => value.ToString(),
    };
}

internal enum Flow { Normal, Break, Continue }

/// <summary>Scopes and execution. Loop bodies get their own scope, so sets inside a loop stay inside (as in Jinja).</summary>
/// <param name="root">The render's top-level output, which generation spans are offsets into.</param>
/// <param name="generationSpans">Where each finished {% generation %} block's text went.</param>
internal sealed class RenderContext(List<Dictionary<string, object?>> scopes, StringBuilder root, List<(int Start, int End)> generationSpans)
{
    private readonly List<Dictionary<string, object?>> _scopes = scopes;

    public Flow ExecuteBody(IReadOnlyList<Node> nodes, StringBuilder output)
    {
        foreach (var node in nodes)
        {
            var flow = Execute(node, output);
            if (flow != Flow.Normal) return flow;
        }
        return Flow.Normal;
    }

    private Flow Execute(Node node, StringBuilder output)
    {
        switch (node)
        {
            case TextNode t:
                output.Append(t.Text);
                return Flow.Normal;
            case OutputNode o:
                output.Append(Py.Str(Eval(o.Value)));
                return Flow.Normal;
            case IfNode i:
                foreach (var (condition, body) in i.Branches)
                    if (Py.Truthy(Eval(condition))) return ExecuteBody(body, output);
                return ExecuteBody(i.Else, output);
            case ForNode f:
                return ExecuteFor(f, output);
            case SetNode s:
                Assign(s.Target, Eval(s.Value));
                return Flow.Normal;
            case SetBlockNode sb:
            {
                var captured = new StringBuilder();
                ExecuteBody(sb.Body, captured);
                _scopes[^1][sb.Name] = captured.ToString();
                return Flow.Normal;
            }
            case MacroNode m:
                _scopes[^1][m.Name] = MakeMacro(m);
                return Flow.Normal;
            case BlockNode b:
                return ExecuteBody(b.Body, output);
            case GenerationNode g:
            {
                // Jinja runs the block as a caller() macro: its own scope, its text rendered apart, then written out.
                var text = new StringBuilder();
                _scopes.Add(new Dictionary<string, object?>(StringComparer.Ordinal));
                Flow flow;
                try { flow = ExecuteBody(g.Body, text); }
                finally { _scopes.RemoveAt(_scopes.Count - 1); }
                int start = root.Length;
                generationSpans.Add((start, start + text.Length));
                output.Append(text);
                return flow;
            }
            case DoNode d:
                Eval(d.Value);
                return Flow.Normal;
            case BreakNode:
                return Flow.Break;
            case ContinueNode:
                return Flow.Continue;
            default:
                throw new ChatTemplateException($"Unknown template node {node.GetType().Name}.");
        }
    }

    private Flow ExecuteFor(ForNode f, StringBuilder output)
    {
        var items = Py.Iterate(Eval(f.Iterable));
        if (f.Filter is not null)
        {
            var kept = new List<object?>();
            foreach (var item in items)
            {
                _scopes.Add(new Dictionary<string, object?>(StringComparer.Ordinal));
                try { Bind(f.Targets, item); if (Py.Truthy(Eval(f.Filter))) kept.Add(item); }
                finally { _scopes.RemoveAt(_scopes.Count - 1); }
            }
            items = kept;
        }
        if (items.Count == 0) return ExecuteBody(f.Else, output);
        for (int index = 0; index < items.Count; index++)
        {
            _scopes.Add(new Dictionary<string, object?>(StringComparer.Ordinal) { ["loop"] = new LoopInfo(items, index) });
            try
            {
                Bind(f.Targets, items[index]);
                if (ExecuteBody(f.Body, output) == Flow.Break) break;
            }
            finally { _scopes.RemoveAt(_scopes.Count - 1); }
        }
        return Flow.Normal;
    }

    private void Bind(IReadOnlyList<string> targets, object? item)
    {
        if (targets.Count == 1) { _scopes[^1][targets[0]] = item; return; }
        var parts = Py.Iterate(item);
        if (parts.Count != targets.Count)
            throw new ChatTemplateException($"Cannot unpack {parts.Count} values into {targets.Count} loop variables.");
        for (int i = 0; i < targets.Count; i++) _scopes[^1][targets[i]] = parts[i];
    }

    private void Assign(Expr target, object? value)
    {
        switch (target)
        {
            case NameExpr n:
                _scopes[^1][n.Name] = value;
                break;
            case ListExpr { IsTuple: true } tuple:
            {
                var parts = Py.Iterate(value);
                if (parts.Count != tuple.Items.Count)
                    throw new ChatTemplateException($"Cannot unpack {parts.Count} values into {tuple.Items.Count} names.");
                for (int i = 0; i < parts.Count; i++) Assign(tuple.Items[i], parts[i]);
                break;
            }
            case AttrExpr { Target: var owner, Name: var name }:
                if (Eval(owner) is not JinjaNamespace ns)
                    throw new ChatTemplateException($"Only a namespace() object can have attributes set (set ....{name}).");
                ns[name] = value;
                break;
            default:
                throw new ChatTemplateException("Unsupported set target.");
        }
    }

    private JinjaCallable MakeMacro(MacroNode m)
    {
        var definitionScopes = _scopes.ToList();
        return (args, kwargs) =>
        {
            var local = new Dictionary<string, object?>(StringComparer.Ordinal);
            var inner = new RenderContext([.. definitionScopes, local], root, generationSpans);
            for (int i = 0; i < m.Parameters.Count; i++)
            {
                var (name, def) = m.Parameters[i];
                local[name] = i < args.Count ? args[i]
                    : kwargs.TryGetValue(name, out var kw) ? kw
                    : def is not null ? inner.Eval(def) : Undefined.Instance;
            }
            var output = new StringBuilder();
            inner.ExecuteBody(m.Body, output);
            return output.ToString();
        };
    }

    private object? Lookup(string name)
    {
        for (int i = _scopes.Count - 1; i >= 0; i--)
            if (_scopes[i].TryGetValue(name, out var v)) return v;
        return Undefined.Instance;
    }

    public object? Eval(Expr expr)
    {
        switch (expr)
        {
            case ConstExpr c: return c.Value;
            case NameExpr n: return Lookup(n.Name);
            case AttrExpr a: return Builtins.GetAttr(Eval(a.Target), a.Name);
            case ItemExpr i: return Builtins.GetItem(Eval(i.Target), Eval(i.Key));
            case SliceExpr s:
                return Builtins.Slice(Eval(s.Target),
                    s.Start is null ? null : Eval(s.Start), s.Stop is null ? null : Eval(s.Stop), s.Step is null ? null : Eval(s.Step));
            case CallExpr call:
            {
                var callee = Eval(call.Callee);
                var args = call.Args.Select(Eval).ToList();
                var kwargs = call.Kwargs.ToDictionary(k => k.Name, k => Eval(k.Value), StringComparer.Ordinal);
                return callee is JinjaCallable f ? f(args, kwargs)
                    : throw new ChatTemplateException($"{Describe(call.Callee)} is {(callee is Undefined ? "undefined" : "not callable")}.");
            }
            case FilterExpr f:
                return Filters.Apply(f.Name, Eval(f.Value), f.Args.Select(Eval).ToList(),
                    f.Kwargs.ToDictionary(k => k.Name, k => Eval(k.Value), StringComparer.Ordinal));
            case TestExpr t:
            {
                bool result = Filters.Test(t.Name, Eval(t.Value), t.Args.Select(Eval).ToList());
                return t.Negated ? !result : result;
            }
            case UnaryExpr { Op: "not" } u: return !Py.Truthy(Eval(u.Operand));
            case UnaryExpr { Op: "-" } u:
                return Eval(u.Operand) switch
                {
                    long l => (object)(-l),
                    double d => -d,
                    var v => throw new ChatTemplateException($"Cannot negate {Py.TypeName(v)}."),
                };
            case BinaryExpr { Op: "and" } b:
            {
                var left = Eval(b.Left);
                return Py.Truthy(left) ? Eval(b.Right) : left;
            }
            case BinaryExpr { Op: "or" } b:
            {
                var left = Eval(b.Left);
                return Py.Truthy(left) ? left : Eval(b.Right);
            }
            case BinaryExpr b: return Builtins.Binary(b.Op, Eval(b.Left), Eval(b.Right));
            case CompareExpr c:
            {
                var left = Eval(c.First);
                foreach (var (op, rightExpr) in c.Rest)
                {
                    var right = Eval(rightExpr);
                    bool ok = op switch
                    {
                        "==" => Py.Equals(left, right),
                        "!=" => !Py.Equals(left, right),
                        "<" => Py.Compare(left, right) < 0,
                        ">" => Py.Compare(left, right) > 0,
                        "<=" => Py.Compare(left, right) <= 0,
                        ">=" => Py.Compare(left, right) >= 0,
                        "in" => Py.Contains(right, left),
                        "not in" => !Py.Contains(right, left),
                        _ => throw new ChatTemplateException($"Unknown comparison {op}."),
                    };
                    if (!ok) return false;
                    left = right;
                }
                return true;
            }
            case CondExpr c:
                return Py.Truthy(Eval(c.Condition)) ? Eval(c.Then) : c.Else is null ? Undefined.Instance : Eval(c.Else);
            case ListExpr l:
                return l.IsTuple ? new JinjaTuple(l.Items.Select(Eval)) : l.Items.Select(Eval).ToList();
            case DictExpr d:
            {
                var dict = new Dictionary<string, object?>(StringComparer.Ordinal);
                foreach (var (k, v) in d.Items) dict[Py.Str(Eval(k))] = Eval(v);
                return dict;
            }
            default:
                throw new ChatTemplateException($"Unknown expression {expr.GetType().Name}.");
        }
    }

    private static string Describe(Expr e) => e switch
    {
        NameExpr n => $"'{n.Name}'",
        AttrExpr a => $"'{a.Name}'",
        _ => "The called value",
    };
}

/// <summary>The loop variable inside {% for %}.</summary>
internal sealed class LoopInfo(IReadOnlyList<object?> items, int index)
{
    public object? Get(string name) => name switch
    {
        "index" => (long)index + 1,
        "index0" => (long)index,
        "revindex" => (long)(items.Count - index),
        "revindex0" => (long)(items.Count - index - 1),
        "first" => index == 0,
        "last" => index == items.Count - 1,
        "length" => (long)items.Count,
        "depth" => 1L,
        "depth0" => 0L,
        "previtem" => index > 0 ? items[index - 1] : Undefined.Instance,
        "nextitem" => index < items.Count - 1 ? items[index + 1] : Undefined.Instance,
        "cycle" => (JinjaCallable)((args, _) => args.Count == 0 ? Undefined.Instance : args[index % args.Count]),
        _ => Undefined.Instance,
    };
}
