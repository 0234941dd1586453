namespace FineTune.Engine.Tokenization.Jinja;

// ---- Template nodes ------------------------------------------------------------------------------

internal abstract record Node;
internal sealed record TextNode(string Text) : Node;
internal sealed record OutputNode(Expr Value) : Node;
internal sealed record IfNode(IReadOnlyList<(Expr Condition, IReadOnlyList<Node> Body)> Branches, IReadOnlyList<Node> Else) : Node;
internal sealed record ForNode(IReadOnlyList<string> Targets, Expr Iterable, Expr? Filter, IReadOnlyList<Node> Body, IReadOnlyList<Node> Else) : Node;
internal sealed record SetNode(Expr Target, Expr Value) : Node;
internal sealed record SetBlockNode(string Name, IReadOnlyList<Node> Body) : Node;
internal sealed record MacroNode(string Name, IReadOnlyList<(string Name, Expr? Default)> Parameters, IReadOnlyList<Node> Body) : Node;
internal sealed record BlockNode(IReadOnlyList<Node> Body) : Node;
/// <summary>HF's {% generation %}: renders its body unchanged and records where that text lands (assistant-token masks).</summary>
internal sealed record GenerationNode(IReadOnlyList<Node> Body) : Node;
internal sealed record DoNode(Expr Value) : Node;
internal sealed record BreakNode : Node;
internal sealed record ContinueNode : Node;

// ---- Expressions ---------------------------------------------------------------------------------

internal abstract record Expr;
internal sealed record ConstExpr(object? Value) : Expr;
internal sealed record NameExpr(string Name) : Expr;
internal sealed record AttrExpr(Expr Target, string Name) : Expr;
internal sealed record ItemExpr(Expr Target, Expr Key) : Expr;
internal sealed record SliceExpr(Expr Target, Expr? Start, Expr? Stop, Expr? Step) : Expr;
internal sealed record CallExpr(Expr Callee, IReadOnlyList<Expr> Args, IReadOnlyList<(string Name, Expr Value)> Kwargs) : Expr;
internal sealed record FilterExpr(Expr Value, string Name, IReadOnlyList<Expr> Args, IReadOnlyList<(string Name, Expr Value)> Kwargs) : Expr;
internal sealed record TestExpr(Expr Value, string Name, IReadOnlyList<Expr> Args, bool Negated) : Expr;
internal sealed record UnaryExpr(string Op, Expr Operand) : Expr;
internal sealed record BinaryExpr(string Op, Expr Left, Expr Right) : Expr;
internal sealed record CompareExpr(Expr First, IReadOnlyList<(string Op, Expr Right)> Rest) : Expr;
internal sealed record CondExpr(Expr Condition, Expr Then, Expr? Else) : Expr;
internal sealed record ListExpr(IReadOnlyList<Expr> Items, bool IsTuple = false) : Expr;
internal sealed record DictExpr(IReadOnlyList<(Expr Key, Expr Value)> Items) : Expr;

/// <summary>Recursive-descent parser following Jinja's own precedence (jinja2/parser.py).</summary>
internal sealed class JinjaParser
{
    private readonly List<Segment> _segments;
    private int _segment;
    private IReadOnlyList<Token> _tokens = [];
    private int _pos;

    private JinjaParser(List<Segment> segments) => _segments = segments;

    public static IReadOnlyList<Node> Parse(string source)
    {
        var parser = new JinjaParser(JinjaLexer.Split(source));
        var body = parser.ParseBody([], out string? end);
        if (end is not null) throw new ChatTemplateException($"'{{% {end} %}}' has no matching opening tag.");
        return body;
    }

    /// <summary>Parses nodes until a statement whose first word is in <paramref name="ends"/>; returns that word.</summary>
    private List<Node> ParseBody(string[] ends, out string? endWord)
    {
        var nodes = new List<Node>();
        while (_segment < _segments.Count)
        {
            var seg = _segments[_segment++];
            switch (seg.Kind)
            {
                case SegmentKind.Text:
                    nodes.Add(new TextNode(seg.Text));
                    break;
                case SegmentKind.Output:
                    Begin(seg);
                    nodes.Add(new OutputNode(ParseExpression()));
                    ExpectEnd(seg);
                    break;
                default:
                    Begin(seg);
                    var head = Next();
                    if (head.Kind != TokenKind.Name) throw Error(seg, "a statement must start with a keyword");
                    if (ends.Contains(head.Text)) { endWord = head.Text; return nodes; }
                    nodes.Add(ParseStatement(head.Text, seg));
                    break;
            }
        }
        if (ends.Length > 0) throw new ChatTemplateException($"The template ends before '{{% {ends[^1]} %}}'.");
        endWord = null;
        return nodes;
    }

    private Node ParseStatement(string keyword, Segment seg)
    {
        switch (keyword)
        {
            case "if":
            {
                var branches = new List<(Expr, IReadOnlyList<Node>)>();
                var condition = ParseExpression();
                ExpectEnd(seg);
                List<Node> elseBody = [];
                while (true)
                {
                    var body = ParseBody(["elif", "else", "endif"], out string? end);
                    branches.Add((condition, body));
                    var current = _segments[_segment - 1];
                    if (end == "elif") { condition = ParseExpression(); ExpectEnd(current); continue; }
                    ExpectEnd(current);
                    if (end == "else") { elseBody = ParseBody(["endif"], out _); ExpectEnd(_segments[_segment - 1]); }
                    break;
                }
                return new IfNode(branches, elseBody);
            }
            case "for":
            {
                var targets = new List<string> { ExpectName(seg) };
                while (Peek().Is(",")) { Next(); targets.Add(ExpectName(seg)); }
                if (!Next().IsName("in")) throw Error(seg, "expected 'in' in the for loop");
                var iterable = ParseExpression(allowConditional: false);
                Expr? filter = null;
                if (Peek().IsName("if")) { Next(); filter = ParseExpression(); }
                if (Peek().IsName("recursive")) throw Error(seg, "recursive loops are not supported");
                ExpectEnd(seg);
                var body = ParseBody(["else", "endfor"], out string? end);
                ExpectEnd(_segments[_segment - 1]);
                List<Node> elseBody = [];
                if (end == "else") { elseBody = ParseBody(["endfor"], out _); ExpectEnd(_segments[_segment - 1]); }
                return new ForNode(targets, iterable, filter, body, elseBody);
            }
            case "set":
            {
                var target = ParsePrimaryTarget(seg);
                if (Peek().Is(","))
                {
                    var names = new List<Expr> { target };
                    while (Peek().Is(",")) { Next(); names.Add(new NameExpr(ExpectName(seg))); }
                    target = new ListExpr(names, IsTuple: true);
                }
                if (Peek().Kind == TokenKind.End)
                {
                    if (target is not NameExpr name) throw Error(seg, "a block set needs a plain name");
                    ExpectEnd(seg);
                    var body = ParseBody(["endset"], out _);
                    ExpectEnd(_segments[_segment - 1]);
                    return new SetBlockNode(name.Name, body);
                }
                if (!Next().Is("=")) throw Error(seg, "expected '=' in set");
                var value = ParseTupleOrExpression();
                ExpectEnd(seg);
                return new SetNode(target, value);
            }
            case "macro":
            {
                string name = ExpectName(seg);
                var parameters = new List<(string, Expr?)>();
                Expect("(", seg);
                while (!Peek().Is(")"))
                {
                    string p = ExpectName(seg);
                    Expr? def = null;
                    if (Peek().Is("=")) { Next(); def = ParseExpression(); }
                    parameters.Add((p, def));
                    if (!Peek().Is(",")) break;
                    Next();
                }
                Expect(")", seg);
                ExpectEnd(seg);
                var body = ParseBody(["endmacro"], out _);
                ExpectEnd(_segments[_segment - 1]);
                return new MacroNode(name, parameters, body);
            }
            case "generation": // HF's marker for assistant-token masks (transformers' AssistantTracker)
            {
                ExpectEnd(seg);
                var body = ParseBody(["endgeneration"], out _);
                ExpectEnd(_segments[_segment - 1]);
                return new GenerationNode(body);
            }
            case "do":
            {
                var value = ParseExpression();
                ExpectEnd(seg);
                return new DoNode(value);
            }
            case "break": ExpectEnd(seg); return new BreakNode();
            case "continue": ExpectEnd(seg); return new ContinueNode();
            default:
                throw Error(seg, $"the statement '{keyword}' is not supported");
        }
    }

    private Expr ParsePrimaryTarget(Segment seg)
    {
        Expr target = new NameExpr(ExpectName(seg));
        while (Peek().Is(".")) { Next(); target = new AttrExpr(target, ExpectName(seg)); }
        return target;
    }

    // ---- Expressions, lowest precedence first ----------------------------------------------------

    private Expr ParseTupleOrExpression()
    {
        var first = ParseExpression();
        if (!Peek().Is(",")) return first;
        var items = new List<Expr> { first };
        while (Peek().Is(",")) { Next(); if (Peek().Kind == TokenKind.End) break; items.Add(ParseExpression()); }
        return new ListExpr(items, IsTuple: true);
    }

    private Expr ParseExpression(bool allowConditional = true)
    {
        var expr = ParseOr();
        if (!allowConditional) return expr;
        while (Peek().IsName("if"))
        {
            Next();
            var condition = ParseOr();
            Expr? otherwise = null;
            if (Peek().IsName("else")) { Next(); otherwise = ParseExpression(); }
            expr = new CondExpr(condition, expr, otherwise);
        }
        return expr;
    }

    private Expr ParseOr()
    {
        var left = ParseAnd();
        while (Peek().IsName("or")) { Next(); left = new BinaryExpr("or", left, ParseAnd()); }
        return left;
    }

    private Expr ParseAnd()
    {
        var left = ParseNot();
        while (Peek().IsName("and")) { Next(); left = new BinaryExpr("and", left, ParseNot()); }
        return left;
    }

    private Expr ParseNot()
    {
        if (Peek().IsName("not")) { Next(); return new UnaryExpr("not", ParseNot()); }
        return ParseCompare();
    }

    private Expr ParseCompare()
    {
        var first = ParseMath1();
        var rest = new List<(string, Expr)>();
        while (true)
        {
            var t = Peek();
            if (t.Kind == TokenKind.Operator && t.Text is "==" or "!=" or "<" or ">" or "<=" or ">=") { Next(); rest.Add((t.Text, ParseMath1())); }
            else if (t.IsName("in")) { Next(); rest.Add(("in", ParseMath1())); }
            else if (t.IsName("not") && PeekAt(1).IsName("in")) { Next(); Next(); rest.Add(("not in", ParseMath1())); }
            else break;
        }
        return rest.Count == 0 ? first : new CompareExpr(first, rest);
    }

    private Expr ParseMath1()
    {
        var left = ParseConcat();
        while (Peek().Is("+") || Peek().Is("-")) { string op = Next().Text; left = new BinaryExpr(op, left, ParseConcat()); }
        return left;
    }

    private Expr ParseConcat()
    {
        var left = ParseMath2();
        while (Peek().Is("~")) { Next(); left = new BinaryExpr("~", left, ParseMath2()); }
        return left;
    }

    private Expr ParseMath2()
    {
        var left = ParsePow();
        while (Peek().Kind == TokenKind.Operator && Peek().Text is "*" or "/" or "//" or "%")
        {
            string op = Next().Text;
            left = new BinaryExpr(op, left, ParsePow());
        }
        return left;
    }

    private Expr ParsePow()
    {
        var left = ParseUnary();
        while (Peek().Is("**")) { Next(); left = new BinaryExpr("**", left, ParseUnary()); }
        return left;
    }

    private Expr ParseUnary(bool withFilter = true)
    {
        Expr node;
        if (Peek().Is("-")) { Next(); node = new UnaryExpr("-", ParseUnary(false)); }
        else if (Peek().Is("+")) { Next(); node = ParseUnary(false); }
        else node = ParsePrimary();
        node = ParsePostfix(node);
        return withFilter ? ParseFilterChain(node) : node;
    }

    private Expr ParsePrimary()
    {
        var t = Next();
        switch (t.Kind)
        {
            case TokenKind.Name:
                return t.Text switch
                {
                    "true" or "True" => new ConstExpr(true),
                    "false" or "False" => new ConstExpr(false),
                    "none" or "None" => new ConstExpr(null),
                    _ => new NameExpr(t.Text),
                };
            case TokenKind.String:
            {
                string s = (string)t.Value!;
                while (Peek().Kind == TokenKind.String) s += (string)Next().Value!; // "a" "b" → "ab"
                return new ConstExpr(s);
            }
            case TokenKind.Integer:
            case TokenKind.Float:
                return new ConstExpr(t.Value);
        }
        if (t.Is("("))
        {
            if (Peek().Is(")")) { Next(); return new ListExpr([], IsTuple: true); }
            var first = ParseExpression();
            if (Peek().Is(")")) { Next(); return first; }
            var items = new List<Expr> { first };
            while (Peek().Is(",")) { Next(); if (Peek().Is(")")) break; items.Add(ParseExpression()); }
            ExpectOp(")");
            return new ListExpr(items, IsTuple: true);
        }
        if (t.Is("["))
        {
            var items = new List<Expr>();
            while (!Peek().Is("]"))
            {
                items.Add(ParseExpression());
                if (!Peek().Is(",")) break;
                Next();
            }
            ExpectOp("]");
            return new ListExpr(items);
        }
        if (t.Is("{"))
        {
            var items = new List<(Expr, Expr)>();
            while (!Peek().Is("}"))
            {
                var key = ParseExpression();
                ExpectOp(":");
                items.Add((key, ParseExpression()));
                if (!Peek().Is(",")) break;
                Next();
            }
            ExpectOp("}");
            return new DictExpr(items);
        }
        throw new ChatTemplateException($"Unexpected {t} in an expression.");
    }

    private Expr ParsePostfix(Expr node)
    {
        while (true)
        {
            if (Peek().Is("."))
            {
                Next();
                var name = Next();
                node = name.Kind switch
                {
                    TokenKind.Name => new AttrExpr(node, name.Text),
                    TokenKind.Integer => new ItemExpr(node, new ConstExpr(name.Value)),
                    _ => throw new ChatTemplateException($"Expected a name after '.', found {name}."),
                };
            }
            else if (Peek().Is("["))
            {
                Next();
                node = ParseSubscript(node);
            }
            else if (Peek().Is("("))
            {
                Next();
                var (args, kwargs) = ParseArguments();
                node = new CallExpr(node, args, kwargs);
            }
            else return node;
        }
    }

    private Expr ParseSubscript(Expr target)
    {
        Expr? start = null, stop = null, step = null;
        if (!Peek().Is(":")) start = ParseExpression();
        if (Peek().Is("]")) { Next(); return new ItemExpr(target, start ?? throw new ChatTemplateException("Empty subscript []")); }
        ExpectOp(":");
        if (!Peek().Is(":") && !Peek().Is("]")) stop = ParseExpression();
        if (Peek().Is(":")) { Next(); if (!Peek().Is("]")) step = ParseExpression(); }
        ExpectOp("]");
        return new SliceExpr(target, start, stop, step);
    }

    /// <summary>After "(": positional and keyword arguments up to ")".</summary>
    private (List<Expr>, List<(string, Expr)>) ParseArguments()
    {
        var args = new List<Expr>();
        var kwargs = new List<(string, Expr)>();
        while (!Peek().Is(")"))
        {
            if (Peek().Kind == TokenKind.Name && PeekAt(1).Is("="))
            {
                string name = Next().Text;
                Next();
                kwargs.Add((name, ParseExpression()));
            }
            else args.Add(ParseExpression());
            if (!Peek().Is(",")) break;
            Next();
        }
        ExpectOp(")");
        return (args, kwargs);
    }

    private Expr ParseFilterChain(Expr node)
    {
        while (true)
        {
            if (Peek().Is("|"))
            {
                Next();
                string name = Next().Text;
                while (Peek().Is(".")) { Next(); name += "." + Next().Text; }
                List<Expr> args = [];
                List<(string, Expr)> kwargs = [];
                if (Peek().Is("(")) { Next(); (args, kwargs) = ParseArguments(); }
                node = new FilterExpr(node, name, args, kwargs);
            }
            else if (Peek().IsName("is"))
            {
                Next();
                bool negated = false;
                if (Peek().IsName("not")) { Next(); negated = true; }
                var nameToken = Next();
                string name = nameToken.Kind == TokenKind.Name ? nameToken.Text
                    : nameToken.Kind == TokenKind.Operator ? nameToken.Text
                    : throw new ChatTemplateException($"Expected a test name after 'is', found {nameToken}.");
                List<Expr> args = [];
                if (Peek().Is("(")) { Next(); (args, _) = ParseArguments(); }
                else if (Peek().Kind is TokenKind.String or TokenKind.Integer or TokenKind.Float
                         || Peek().Is("[") || Peek().Is("{")
                         || (Peek().Kind == TokenKind.Name && Peek().Text is not ("and" or "or" or "else")))
                    args.Add(ParsePostfix(ParsePrimary())); // "is divisibleby 3", "is in [..]": Jinja's parse_test
                node = new TestExpr(node, name, args, negated);
            }
            else return node;
        }
    }

    // ---- Token helpers -------------------------------------------------------------------------

    private void Begin(Segment seg) { _tokens = seg.Tokens; _pos = 0; }
    private Token Peek() => _tokens[Math.Min(_pos, _tokens.Count - 1)];
    private Token PeekAt(int offset) => _tokens[Math.Min(_pos + offset, _tokens.Count - 1)];
    private Token Next() => _tokens[Math.Min(_pos++, _tokens.Count - 1)];

    private void ExpectOp(string op)
    {
        var t = Next();
        if (!t.Is(op)) throw new ChatTemplateException($"Expected '{op}', found {t}.");
    }

    private void Expect(string op, Segment seg)
    {
        if (!Next().Is(op)) throw Error(seg, $"expected '{op}'");
    }

    private string ExpectName(Segment seg)
    {
        var t = Next();
        return t.Kind == TokenKind.Name ? t.Text : throw Error(seg, $"expected a name, found {t}");
    }

    private void ExpectEnd(Segment seg)
    {
        if (Peek().Kind != TokenKind.End) throw Error(seg, $"unexpected {Peek()}");
    }

    private static ChatTemplateException Error(Segment seg, string what) =>
        new($"Chat template line {seg.Line}: {what} in '{seg.Text.Trim()}'.");
}
