namespace FineTune.Engine.Data;

/// <summary>
/// The little of a tokenizer that building training examples needs: text → ids (without special tokens
/// added), the end-of-sequence id, and ids → text for messages. Any tokenizer satisfies it through
/// <see cref="TextEncoder(Func{string, IReadOnlyList{int}}, int, Func{IReadOnlyList{int}, string}?)"/>,
/// e.g. <c>new TextEncoder(t.Encode, t.EosTokenId, t.Decode)</c> for FineTune.Engine.Tokenization's ITextTokenizer.
/// </summary>
/// <param name="Encode">Text to token ids, no BOS/EOS added.</param>
/// <param name="EosTokenId">Appended after every answer so the model learns to stop.</param>
/// <param name="Decode">Token ids to text (optional; for previews and messages).</param>
public sealed record TextEncoder(Func<string, IReadOnlyList<int>> Encode, int EosTokenId, Func<IReadOnlyList<int>, string>? Decode = null);

/// <summary>Turns a row into the prompt the model reads and the answer it must learn to write.</summary>
public delegate (string Prompt, string Answer) PromptFormatter(QaRow row);

/// <summary>
/// Prompt layouts used until the templates of FineTune.Engine.Tokenization (model chat templates,
/// custom ones) are wired in; the tutorial's "### 指令 / ### 回應" layout is the default.
/// </summary>
public static class PromptFormats
{
    /// <summary>The tutorial's layout: "### 指令:\n{instruction}\n\n[### 輸入:\n{input}\n\n]### 回應:\n" then the answer.</summary>
    public static (string Prompt, string Answer) Tutorial(QaRow row)
    {
        var prompt = new System.Text.StringBuilder();
        if (!string.IsNullOrWhiteSpace(row.System)) prompt.Append(row.System.Trim()).Append("\n\n");
        prompt.Append("### 指令:\n").Append(row.Instruction.Trim()).Append("\n\n");
        if (!string.IsNullOrWhiteSpace(row.Input)) prompt.Append("### 輸入:\n").Append(row.Input.Trim()).Append("\n\n");
        prompt.Append("### 回應:\n");
        return (prompt.ToString(), row.Output.Trim());
    }

    /// <summary>A template with {instruction}, {input}, {system} placeholders for the prompt; the answer follows it.</summary>
    public static PromptFormatter FromTemplate(string template)
    {
        if (!template.Contains("{instruction}", StringComparison.Ordinal))
            throw new ArgumentException($"The prompt template must contain {{instruction}}; got \"{template}\".", nameof(template));
        return row => (template
            .Replace("{instruction}", row.Instruction.Trim(), StringComparison.Ordinal)
            .Replace("{input}", row.Input.Trim(), StringComparison.Ordinal)
            .Replace("{system}", row.System?.Trim() ?? "", StringComparison.Ordinal)
            .Replace("\\n", "\n", StringComparison.Ordinal), row.Output.Trim());
    }
}
