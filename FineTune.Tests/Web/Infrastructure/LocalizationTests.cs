using System.Net;
using System.Text.RegularExpressions;
using System.Xml.Linq;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Data;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using FineTune.Web.Infrastructure;

namespace FineTune.Tests.Web.Infrastructure;

public partial class LocalizationTests
{
    private static string WebFolder => Adapters.TestPaths.InRepo("FineTune.Web");

    private static Dictionary<string, string> Resx(string name) =>
        XDocument.Load(Path.Combine(WebFolder, "Resources", name)).Root!.Elements("data")
            .ToDictionary(d => d.Attribute("name")!.Value, d => d.Element("value")!.Value);

    [Theory]
    [InlineData("zh-TW,zh;q=0.9,en;q=0.8", "zh-TW")]
    [InlineData("zh-CN", "zh-TW")]
    [InlineData("en-US,en;q=0.9", "en")]
    [InlineData("fr-FR,en;q=0.5,zh;q=0.8", "zh-TW")]
    [InlineData("fr-FR", null)]
    [InlineData("", null)]
    public void Browser_languages_map_to_zh_TW_or_English(string header, string? expected) =>
        Assert.Equal(expected, Localization.FromAcceptLanguage(header)?.UICultures.Single().Value);

    [Fact]
    public void Both_languages_have_the_same_keys_and_placeholders()
    {
        var en = Resx("SharedResource.resx");
        var zh = Resx("SharedResource.zh-TW.resx");
        Assert.Equal(en.Keys.Order(), zh.Keys.Order());
        foreach (var (key, text) in en)
            Assert.True(Placeholders(text).SetEquals(Placeholders(zh[key])), $"{key}: '{text}' vs '{zh[key]}'");
    }

    [Fact]
    public void Every_key_the_components_use_exists()
    {
        var keys = Resx("SharedResource.resx").Keys.ToHashSet();
        string[] sources = Directory.EnumerateFiles(WebFolder, "*.*", SearchOption.AllDirectories)
            .Where(f => (f.EndsWith(".razor", StringComparison.Ordinal) || f.EndsWith(".cs", StringComparison.Ordinal)) && !f.Contains("/obj/") && !f.Contains("/bin/"))
            .ToArray();
        var used = sources.SelectMany(f => StaticKey().Matches(File.ReadAllText(f)).Select(m => m.Groups[1].Value)).ToHashSet();
        Assert.NotEmpty(used);
        Assert.Equal([], used.Where(k => !keys.Contains(k)).Order().ToArray());

        // Keys built from enum names.
        string[] dynamic =
        [
            .. Enum.GetNames<ImportErrorCode>().Select(n => "Import_Error_" + n),
            .. Enum.GetNames<IssueKind>().SelectMany(n => new[] { "Issue_" + n, "IssueShort_" + n }),
            .. Enum.GetNames<RunStatus>().Select(n => "Status_" + n),
            .. Enum.GetNames<RunFailureKind>().Select(n => "RunFailure_" + n),
            .. Enum.GetNames<SettingsPreset>().Select(n => "Preset_" + n),
            .. Enum.GetNames<Precision>().Select(n => "Precision_" + n),
            .. Enum.GetNames<LocalFolderProblem>().Select(n => "Model_LocalProblem_" + n),
            .. Enum.GetNames<WarningCode>().SelectMany(n => new[] { "Warn_" + n, "Fix_" + n }),
            .. ModelCatalog.Presets.Select(p => p.NoteKey),
        ];
        Assert.Equal([], dynamic.Where(k => !keys.Contains(k)).ToArray());
    }

    [Fact]
    public void Components_show_no_hard_coded_text()
    {
        // Text between tags in .razor markup must come from L[...] (or be a symbol/number).
        var offenders = new List<string>();
        foreach (string file in Directory.EnumerateFiles(Path.Combine(WebFolder, "Components"), "*.razor", SearchOption.AllDirectories))
        {
            string markup = CodeBlock().Replace(File.ReadAllText(file), string.Empty);
            markup = Comment().Replace(markup, string.Empty);
            markup = Directive().Replace(markup, string.Empty);
            foreach (Match m in TextBetweenTags().Matches(markup))
            {
                string text = m.Groups[1].Value.Trim();
                // Plain words only: anything with @ or C# punctuation is code, not text.
                if (text.Any(char.IsLetter) && !text.Any(c => "@;(){}=?.\"#_".Contains(c)))
                    offenders.Add($"{Path.GetFileName(file)}: {text}");
            }
        }
        Assert.Empty(offenders);
    }

    [Fact]
    public async Task Pages_follow_the_browser_language_and_the_switch()
    {
        using var app = new WebAppHost();
        async Task<string> Get(string path, string? language)
        {
            using var request = new HttpRequestMessage(HttpMethod.Get, path);
            if (language is not null) request.Headers.Add("Accept-Language", language);
            return await (await app.Client.SendAsync(request)).Content.ReadAsStringAsync();
        }

        Assert.Contains("開始微調", await Get("/", "zh-TW"));
        Assert.Contains("lang=\"zh-TW\"", await Get("/", "zh-HK"));
        string english = await Get("/", "en-US");
        Assert.Contains("New fine-tune", english);
        Assert.Contains("lang=\"en\"", english);
        Assert.Contains("開始微調", await Get("/", null));

        var switched = await app.Client.GetAsync("/culture?name=en&returnUrl=%2Fhistory");
        Assert.Equal(HttpStatusCode.Redirect, switched.StatusCode);
        Assert.Equal("/history", switched.Headers.Location?.OriginalString);
        Assert.Contains(".AspNetCore.Culture=c%3Den%7Cuic%3Den", switched.Headers.GetValues("Set-Cookie").Single());
        Assert.Equal("/", (await app.Client.GetAsync("/culture?name=en&returnUrl=https%3A%2F%2Fevil.example")).Headers.Location?.OriginalString);
    }

    private static HashSet<string> Placeholders(string text) => Placeholder().Matches(text).Select(m => m.Value).ToHashSet();

    [GeneratedRegex(@"\{\d+\}")] private static partial Regex Placeholder();
    [GeneratedRegex(@"(?:\bL|localizer)\[""([A-Za-z0-9_]+)""(?=\s*[\],])")] private static partial Regex StaticKey();
    [GeneratedRegex(@"@code\s*\{[\s\S]*$")] private static partial Regex CodeBlock();
    [GeneratedRegex(@"@\*[\s\S]*?\*@|<!--[\s\S]*?-->")] private static partial Regex Comment();
    [GeneratedRegex(@">([^<>{}]*)<")] private static partial Regex TextBetweenTags();
    [GeneratedRegex(@"^@(inject|using|page|implements|attribute|layout|inherits)\b.*$", RegexOptions.Multiline)] private static partial Regex Directive();
}
