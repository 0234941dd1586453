using System.Text.Json;
using FineTune.Engine.Tokenization.Jinja;
using FineTune.Tests.Web.Support;

namespace FineTune.Tests.Tokenization;

/// <summary>
/// The template renderer against jinja2 3.1.6 set up as transformers sets it up. Cases and expected renders:
/// Tokenization/Data/jinja_cases.json, rendered by tools/tokenization/jinja_golden.py (exact text equality).
/// </summary>
public class JinjaTemplateTests
{
    public static TheoryData<string> CaseNames =>
        new(LoadCases().Select(c => c.GetProperty("name").GetString()!));

    private static List<JsonElement> LoadCases()
    {
        string path = Path.Combine(AppContext.BaseDirectory, "Tokenization", "Data", "jinja_cases.json");
        if (!File.Exists(path)) path = TestFiles.Fixture("../Tokenization/Data/jinja_cases.json");
        using var stream = File.OpenRead(path);
        return JsonDocument.Parse(stream).RootElement.EnumerateArray().Select(e => e.Clone()).ToList();
    }

    /// <summary>JSON → the plain values the renderer takes (dicts keep their key order, as Python's do).</summary>
    internal static object? ToValue(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => e.EnumerateObject().ToDictionary(p => p.Name, p => ToValue(p.Value)),
        JsonValueKind.Array => e.EnumerateArray().Select(ToValue).ToList(),
        JsonValueKind.String => e.GetString(),
        JsonValueKind.Number => e.TryGetInt64(out long l) ? (object)l : e.GetDouble(),
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => null,
    };

    [Theory]
    [MemberData(nameof(CaseNames))]
    public void Renders_like_jinja2(string name)
    {
        var c = LoadCases().Single(x => x.GetProperty("name").GetString() == name);
        var template = new JinjaTemplate(c.GetProperty("template").GetString()!) { Now = () => new DateTime(2026, 7, 4, 9, 5, 0) };
        var variables = c.TryGetProperty("variables", out var v)
            ? (Dictionary<string, object?>)ToValue(v)!
            : new Dictionary<string, object?>();

        if (c.TryGetProperty("error", out var error))
        {
            var e = Assert.Throws<ChatTemplateException>(() => template.Render(variables));
            string expectedMessage = error.GetString()!.Split(": ", 2)[1];
            Assert.Contains(expectedMessage, e.Message);
            return;
        }
        Assert.Equal(c.GetProperty("expected").GetString(), template.Render(variables));
    }

    [Fact]
    public void Syntax_errors_name_the_line()
    {
        var e = Assert.Throws<ChatTemplateException>(() => new JinjaTemplate("ok\n{% if x %}\n{% endfor %}"));
        Assert.Contains("endfor", e.Message);
        var unclosed = Assert.Throws<ChatTemplateException>(() => new JinjaTemplate("a\n{{ x "));
        Assert.Contains("line 2", unclosed.Message);
        Assert.Throws<ChatTemplateException>(() => new JinjaTemplate("{{ x | nosuchfilter }}").Render(new Dictionary<string, object?>()));
    }
}
