using System.Globalization;
using System.Text;

namespace FineTune.Engine.Tokenization.Jinja;

internal enum TokenKind { Name, String, Integer, Float, Operator, End }

internal readonly record struct Token(TokenKind Kind, string Text, object? Value = null)
{
    public bool Is(string op) => Kind == TokenKind.Operator && Text == op;
    public bool IsName(string name) => Kind == TokenKind.Name && Text == name;
    public override string ToString() => Kind == TokenKind.End ? "end of tag" : $"'{Text}'";
}

internal enum SegmentKind { Text, Output, Statement }

internal sealed record Segment(SegmentKind Kind, string Text, IReadOnlyList<Token> Tokens, int Line);

/// <summary>
/// Splits a template into text, {{ output }} and {% statement %} segments, applying Jinja's whitespace
/// control the way HF configures it for chat templates: trim_blocks and lstrip_blocks on, plus the
/// explicit "-" (strip) and "+" (keep) markers.
/// </summary>
internal static class JinjaLexer
{
    public static List<Segment> Split(string source)
    {
        var segments = new List<Segment>();
        int pos = 0;
        bool stripNextText = false;
        while (pos <= source.Length)
        {
            int open = FindOpen(source, pos);
            string text = source[pos..(open < 0 ? source.Length : open)];
            if (stripNextText) text = text.TrimStart();
            stripNextText = false;
            if (open < 0)
            {
                if (text.Length > 0) segments.Add(new Segment(SegmentKind.Text, text, [], LineOf(source, pos)));
                break;
            }

            char kind = source[open + 1];
            int inner = open + 2;
            char leftMark = inner < source.Length ? source[inner] : '\0';
            if (leftMark is '-' or '+') inner++;
            if (leftMark == '-')
                text = text.TrimEnd();
            else if (kind is '%' or '#' && leftMark != '+')
            {
                // lstrip_blocks: spaces and tabs between the line start and a block tag go.
                int lineStart = text.LastIndexOf('\n') + 1;
                bool atLineStart = lineStart > 0 || pos == 0 || source[pos - 1] == '\n';
                if (atLineStart && text.AsSpan(lineStart).Trim(" \t\f\v\r").IsEmpty) text = text[..lineStart];
            }
            if (text.Length > 0) segments.Add(new Segment(SegmentKind.Text, text, [], LineOf(source, pos)));

            string close = kind switch { '{' => "}}", '%' => "%}", _ => "#}" };
            int end = kind == '#' ? source.IndexOf("#}", inner, StringComparison.Ordinal) : FindClose(source, inner, close);
            if (end < 0)
                throw new ChatTemplateException($"The tag opened on line {LineOf(source, open)} is never closed with '{close}'.");
            int codeEnd = end;
            char rightMark = end > inner ? source[end - 1] : '\0';
            if (rightMark is '-' or '+') codeEnd--;
            pos = end + 2;
            if (rightMark == '-') stripNextText = true;
            else if (kind is '%' or '#' && rightMark != '+')
            {
                // trim_blocks: the first newline after a block tag goes.
                if (pos < source.Length && source[pos] == '\n') pos++;
                else if (pos + 1 < source.Length && source[pos] == '\r' && source[pos + 1] == '\n') pos += 2;
            }
            if (kind == '#') continue;

            string code = source[inner..codeEnd];
            var tokens = Tokenize(code, LineOf(source, open));
            segments.Add(new Segment(kind == '{' ? SegmentKind.Output : SegmentKind.Statement, code, tokens, LineOf(source, open)));
            if (pos == source.Length) break;
        }
        return segments;
    }

    private static int FindOpen(string s, int from)
    {
        for (int i = s.IndexOf('{', from); i >= 0 && i + 1 < s.Length; i = s.IndexOf('{', i + 1))
            if (s[i + 1] is '{' or '%' or '#') return i;
        return -1;
    }

    /// <summary>The close delimiter's position, skipping quoted strings (a string may hold "}}").</summary>
    private static int FindClose(string s, int from, string close)
    {
        for (int i = from; i < s.Length - 1; i++)
        {
            char c = s[i];
            if (c is '\'' or '"')
            {
                for (i++; i < s.Length && s[i] != c; i++)
                    if (s[i] == '\\') i++;
                continue;
            }
            if (c == close[0] && s[i + 1] == close[1]) return i;
        }
        return -1;
    }

    private static int LineOf(string s, int index)
    {
        int line = 1;
        for (int i = 0; i < index && i < s.Length; i++) if (s[i] == '\n') line++;
        return line;
    }

    private static readonly string[] Operators =
        ["==", "!=", "<=", ">=", "//", "**", "+", "-", "*", "/", "%", "~", "<", ">", "=", "(", ")", "[", "]", "{", "}", ",", ".", ":", "|"];

    public static List<Token> Tokenize(string code, int line)
    {
        var tokens = new List<Token>();
        int i = 0;
        while (i < code.Length)
        {
            char c = code[i];
            if (char.IsWhiteSpace(c)) { i++; continue; }
            if (char.IsLetter(c) || c == '_')
            {
                int start = i;
                while (i < code.Length && (char.IsLetterOrDigit(code[i]) || code[i] == '_')) i++;
                tokens.Add(new Token(TokenKind.Name, code[start..i]));
                continue;
            }
            if (char.IsDigit(c))
            {
                int start = i;
                while (i < code.Length && (char.IsDigit(code[i]) || code[i] == '_')) i++;
                bool isFloat = false;
                if (i + 1 < code.Length && code[i] == '.' && char.IsDigit(code[i + 1]))
                {
                    isFloat = true;
                    for (i++; i < code.Length && char.IsDigit(code[i]); i++) { }
                }
                if (i < code.Length && code[i] is 'e' or 'E')
                {
                    int save = i;
                    i++;
                    if (i < code.Length && code[i] is '+' or '-') i++;
                    if (i < code.Length && char.IsDigit(code[i])) { isFloat = true; while (i < code.Length && char.IsDigit(code[i])) i++; }
                    else i = save;
                }
                string digits = code[start..i].Replace("_", "");
                tokens.Add(isFloat
                    ? new Token(TokenKind.Float, digits, double.Parse(digits, CultureInfo.InvariantCulture))
                    : new Token(TokenKind.Integer, digits, long.Parse(digits, CultureInfo.InvariantCulture)));
                continue;
            }
            if (c is '\'' or '"')
            {
                var sb = new StringBuilder();
                int start = i;
                for (i++; ; i++)
                {
                    if (i >= code.Length) throw new ChatTemplateException($"Line {line}: a string is not closed: {code[start..]}");
                    char ch = code[i];
                    if (ch == c) { i++; break; }
                    if (ch != '\\' || i + 1 >= code.Length) { sb.Append(ch); continue; }
                    char esc = code[++i];
                    switch (esc)
                    {
                        case 'n': sb.Append('\n'); break;
                        case 't': sb.Append('\t'); break;
                        case 'r': sb.Append('\r'); break;
                        case 'b': sb.Append('\b'); break;
                        case 'f': sb.Append('\f'); break;
                        case '0': sb.Append('\0'); break;
                        case '\\': sb.Append('\\'); break;
                        case '\'': sb.Append('\''); break;
                        case '"': sb.Append('"'); break;
                        case '\n': break;
                        case 'u' when i + 4 < code.Length:
                            sb.Append((char)Convert.ToInt32(code.Substring(i + 1, 4), 16)); i += 4; break;
                        case 'x' when i + 2 < code.Length:
                            sb.Append((char)Convert.ToInt32(code.Substring(i + 1, 2), 16)); i += 2; break;
                        default: sb.Append('\\').Append(esc); break; // Python keeps unknown escapes as written
                    }
                }
                tokens.Add(new Token(TokenKind.String, sb.ToString(), sb.ToString()));
                continue;
            }
            string? op = Operators.FirstOrDefault(o => string.CompareOrdinal(code, i, o, 0, o.Length) == 0);
            if (op is null) throw new ChatTemplateException($"Line {line}: unexpected character '{c}' in '{code.Trim()}'.");
            tokens.Add(new Token(TokenKind.Operator, op));
            i += op.Length;
        }
        tokens.Add(new Token(TokenKind.End, ""));
        return tokens;
    }
}

/// <summary>A chat template could not be parsed or rendered (or it called raise_exception).</summary>
public sealed class ChatTemplateException : Exception
{
    public ChatTemplateException(string message) : base(message) { }
    public ChatTemplateException(string message, Exception inner) : base(message, inner) { }
}
