using System.Globalization;
using System.Text;
using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;

namespace FineTune.Engine.Export;

/// <summary>
/// An Ollama Modelfile for an exported GGUF: FROM the file beside it, a TEMPLATE that writes a question exactly as
/// the run's prompt format did in training (derived by rendering that same <see cref="PromptTemplate"/> with
/// markers, then turning the markers into Ollama's {{ .System }} / {{ .Prompt }} / {{ .Response }}), the tokenizer's
/// end-of-turn tokens as stop words, and the sampling settings of the test step.
/// </summary>
public static class OllamaModelfile
{
    private const string UserMark = "\u0001USER\u0001", SystemMark = "\u0001SYSTEM\u0001", AnswerMark = "\u0001ANSWER\u0001";

    /// <param name="ggufFileName">The GGUF file's name, relative to the Modelfile (they sit side by side).</param>
    /// <param name="template">The run's prompt format.</param>
    /// <param name="tokenizer">The model's tokenizer (stop tokens, BOS).</param>
    /// <param name="temperature">Sampling temperature of the test step (0 for greedy).</param>
    /// <param name="topP">top_p of the test step.</param>
    public static string Build(string ggufFileName, PromptTemplateSettings template, ITextTokenizer tokenizer, double temperature, double topP)
    {
        var prompt = PromptTemplate.Create(template, tokenizer);
        var text = new StringBuilder();
        text.Append(CultureInfo.InvariantCulture, $"FROM ./{ggufFileName}\n\n");
        text.Append("TEMPLATE \"\"\"").Append(GoTemplate(prompt, tokenizer)).Append("\"\"\"\n\n");
        foreach (string stop in StopWords(tokenizer))
            text.Append(CultureInfo.InvariantCulture, $"PARAMETER stop \"{stop.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\"", "\\\"", StringComparison.Ordinal)}\"\n");
        text.Append(CultureInfo.InvariantCulture, $"PARAMETER temperature {temperature:0.###}\n");
        text.Append(CultureInfo.InvariantCulture, $"PARAMETER top_p {topP:0.###}\n");
        return text.ToString();
    }

    /// <summary>`ollama create NAME -f FILE.Modelfile`, the name made from the file's (lower case, [a-z0-9._-]).</summary>
    public static string CreateCommand(string modelfilePath)
    {
        string stem = Path.GetFileNameWithoutExtension(modelfilePath).ToLowerInvariant();
        string name = new string(stem.Select(c => char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '-').ToArray()).Trim('-', '.');
        return $"ollama create {(name.Length > 0 ? name : "finetune")} -f {Path.GetFileName(modelfilePath)}";
    }

    /// <summary>The text of each end-of-sequence id (e.g. &lt;|im_end|&gt;, &lt;|endoftext|&gt;).</summary>
    public static IReadOnlyList<string> StopWords(ITextTokenizer tokenizer) =>
        tokenizer.EosTokenIds.Select(tokenizer.IdToToken).OfType<string>().Distinct(StringComparer.Ordinal).ToList();

    /// <summary>
    /// The Go template: the prompt as training wrote it (with a system message when the format has a place for one),
    /// then the response and what training put after the answer (e.g. "&lt;|im_end|&gt;\n").
    /// </summary>
    public static string GoTemplate(PromptTemplate prompt, ITextTokenizer tokenizer)
    {
        string plain = Strip(prompt.FormatPrompt(new QaRow(UserMark, "")), tokenizer);
        string withSystem = Strip(prompt.FormatPrompt(new QaRow(UserMark, "", System: SystemMark)), tokenizer);
        string afterAnswer = prompt.Format(new QaRow(UserMark, AnswerMark)).Answer;
        afterAnswer = afterAnswer[(afterAnswer.IndexOf(AnswerMark, StringComparison.Ordinal) + AnswerMark.Length)..];
        if (prompt.Chat is null && tokenizer.EosToken is { } eos) afterAnswer += eos; // tutorial/custom answers end with EOS in training
        var go = new StringBuilder();
        if (withSystem.Contains(SystemMark, StringComparison.Ordinal) && withSystem != plain)
            go.Append("{{ if .System }}").Append(Go(withSystem)).Append("{{ else }}").Append(Go(plain)).Append("{{ end }}"); // no {{- trims: the text around is exact
        else go.Append(Go(plain));
        go.Append("{{ .Response }}").Append(Go(afterAnswer));
        return go.ToString();
    }

    /// <summary>llama.cpp puts BOS itself where the tokenizer adds one; the template must not write it again.</summary>
    private static string Strip(string text, ITextTokenizer tokenizer) =>
        tokenizer.BosToken is { Length: > 0 } bos && text.StartsWith(bos, StringComparison.Ordinal) ? text[bos.Length..] : text;

    private static string Go(string text) =>
        text.Replace("{{", "{{ \"{{\" }}", StringComparison.Ordinal)
            .Replace(UserMark, "{{ .Prompt }}", StringComparison.Ordinal)
            .Replace(SystemMark, "{{ .System }}", StringComparison.Ordinal);
}
