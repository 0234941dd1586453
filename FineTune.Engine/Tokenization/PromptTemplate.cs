using System.Text.RegularExpressions;
using FineTune.Engine.Data;

namespace FineTune.Engine.Tokenization;

/// <summary>How Q&amp;A rows become training text.</summary>
public enum PromptStyle
{
    /// <summary>The model's own chat template (Qwen ChatML, Llama 3 headers, ...): what chat at inference uses.</summary>
    ModelChatTemplate,
    /// <summary>The tutorial's "### 指令：\n{instruction}\n\n### 回應：\n{output}".</summary>
    Tutorial,
    /// <summary>A user template with {instruction}, {input}, {output} (and optionally {system}).</summary>
    Custom,
}

/// <param name="Style">Which format.</param>
/// <param name="CustomTemplate">For <see cref="PromptStyle.Custom"/>: must contain {output} once.</param>
/// <param name="SystemPrompt">For the chat template: used for rows without their own System; null keeps the template's default.</param>
public sealed record PromptTemplateSettings(PromptStyle Style = PromptStyle.ModelChatTemplate, string? CustomTemplate = null, string? SystemPrompt = null);

/// <summary>Training text split where the answer starts: loss goes on <see cref="Answer"/> only.</summary>
public sealed record PromptPair(string Prompt, string Answer)
{
    public string Text => Prompt + Answer;
}

/// <summary>Token ids of one example and labels with -100 (ignored by the loss) over the prompt.</summary>
public sealed record EncodedExample(int[] InputIds, int[] Labels)
{
    public const int IgnoreIndex = TrainingExamples.IgnoreIndex;
    public int PromptLength => Array.FindIndex(Labels, l => l != IgnoreIndex) is var i and >= 0 ? i : Labels.Length;
}

/// <summary>The template is unusable (no {output}, unknown placeholder, model without chat template...).</summary>
public sealed class PromptTemplateException(string message) : Exception(message);

/// <summary>
/// Turns a <see cref="QaRow"/> into (prompt, answer) text and into ids + labels, the same way for training
/// and for inference.
/// Chat template: prompt = render([system?, user], add_generation_prompt=True); the answer is the rest of
/// render([system?, user, assistant]) (e.g. "answer&lt;|im_end|&gt;\n"), encoded without adding BOS (the
/// template writes it where the model wants one). Tutorial/custom text: prompt gets the tokenizer's BOS
/// (if it adds one) and the answer ends with the EOS token so the model learns to stop.
/// </summary>
public sealed partial class PromptTemplate
{
    public const string TutorialTemplate = "### 指令：\n{instruction}\n\n### 回應：\n{output}";
    /// <summary>The tutorial format when a row has an input (alpaca-style extra context).</summary>
    public const string TutorialTemplateWithInput = "### 指令：\n{instruction}\n\n### 輸入：\n{input}\n\n### 回應：\n{output}";

    private static readonly string[] Placeholders = ["instruction", "input", "output", "system"];

    private readonly ITextTokenizer _tokenizer;
    private readonly ChatTemplate? _chat;
    private readonly string? _text;

    private PromptTemplate(PromptTemplateSettings settings, ITextTokenizer tokenizer, ChatTemplate? chat, string? text)
    {
        Settings = settings;
        _tokenizer = tokenizer;
        _chat = chat;
        _text = text;
    }

    public PromptTemplateSettings Settings { get; }

    /// <summary>The chat template in use (style ModelChatTemplate), for inference chat.</summary>
    public ChatTemplate? Chat => _chat;

    public static PromptTemplate Create(PromptTemplateSettings settings, ITextTokenizer tokenizer)
    {
        switch (settings.Style)
        {
            case PromptStyle.ModelChatTemplate:
                var chat = ChatTemplate.ForTokenizer(tokenizer)
                    ?? throw new PromptTemplateException(
                        "This model has no chat template (tokenizer_config.json has no chat_template and there is no chat_template.jinja). " +
                        "Choose the tutorial format (### 指令 / ### 回應) or a custom template instead.");
                return new PromptTemplate(settings, tokenizer, chat, null);
            case PromptStyle.Tutorial:
                return new PromptTemplate(settings, tokenizer, null, TutorialTemplate);
            case PromptStyle.Custom:
                Validate(settings.CustomTemplate);
                return new PromptTemplate(settings, tokenizer, null, settings.CustomTemplate);
            default:
                throw new ArgumentOutOfRangeException(nameof(settings), settings.Style, "Unknown prompt style.");
        }
    }

    /// <summary>Checks a custom template; the message says what is wrong.</summary>
    public static void Validate(string? template)
    {
        if (string.IsNullOrWhiteSpace(template))
            throw new PromptTemplateException("The custom template is empty. Write the prompt with {instruction} where the question goes and {output} where the answer goes.");
        int outputs = Regex.Matches(template, @"\{output\}").Count;
        if (outputs != 1)
            throw new PromptTemplateException(outputs == 0
                ? "The custom template has no {output}: write {output} where the answer goes (the model learns the text from there on)."
                : "The custom template has {output} more than once; use it exactly once, where the answer goes.");
        if (!template.Contains("{instruction}", StringComparison.Ordinal))
            throw new PromptTemplateException("The custom template has no {instruction}: write {instruction} where the question goes.");
        var unknown = PlaceholderPattern().Matches(template).Select(m => m.Groups[1].Value).Where(n => !Placeholders.Contains(n)).Distinct().ToList();
        if (unknown.Count > 0)
            throw new PromptTemplateException($"The custom template uses {string.Join(", ", unknown.Select(u => "{" + u + "}"))}, which is not known. " +
                                              "Use {instruction}, {input}, {output} and {system}.");
        if (template.IndexOf("{output}", StringComparison.Ordinal) < template.IndexOf("{instruction}", StringComparison.Ordinal))
            throw new PromptTemplateException("In the custom template {output} comes before {instruction}; the answer must come after the question.");
    }

    /// <summary>The training text of a row, split where the answer starts.</summary>
    public PromptPair Format(QaRow row)
    {
        ArgumentNullException.ThrowIfNull(row);
        if (_chat is not null) return FormatChat(row);
        string template = Settings.Style == PromptStyle.Tutorial && !string.IsNullOrWhiteSpace(row.Input) ? TutorialTemplateWithInput : _text!;
        int at = template.IndexOf("{output}", StringComparison.Ordinal);
        return new PromptPair(Fill(template[..at], row), row.Output + Fill(template[(at + "{output}".Length)..], row));
    }

    /// <summary>The text the model is given at inference for a question (ends where the answer would start).</summary>
    public string FormatPrompt(QaRow row)
    {
        if (_chat is not null) return _chat.Render(Messages(row, withAnswer: false), addGenerationPrompt: true);
        return Format(row with { Output = "" }).Prompt;
    }

    /// <summary>Ids of the prompt as given to the model at inference.</summary>
    public IReadOnlyList<int> EncodePrompt(QaRow row) =>
        _chat is not null
            ? _tokenizer.Encode(FormatPrompt(row), addSpecialTokens: false)
            : [.. SpecialPrefix(FormatPrompt(row)), .. _tokenizer.Encode(FormatPrompt(row), addSpecialTokens: false)];

    /// <summary>Ids and labels for training: prompt and answer tokenized apart (no merge across the boundary), loss on the answer.</summary>
    public EncodedExample Encode(QaRow row)
    {
        var pair = Format(row);
        var prompt = new List<int>();
        var answer = new List<int>(_tokenizer.Encode(pair.Answer, addSpecialTokens: false));
        if (_chat is not null)
            prompt.AddRange(_tokenizer.Encode(pair.Prompt, addSpecialTokens: false));
        else
        {
            prompt.AddRange(SpecialPrefix(pair.Prompt));
            prompt.AddRange(_tokenizer.Encode(pair.Prompt, addSpecialTokens: false));
            int eos = _tokenizer.EosTokenId ?? throw new PromptTemplateException(
                "The tokenizer has no end-of-sequence token, so the model could not learn where answers end. Use the model's chat template.");
            if (answer.Count == 0 || answer[^1] != eos) answer.Add(eos);
        }
        int[] ids = [.. prompt, .. answer];
        int[] labels = [.. Enumerable.Repeat(EncodedExample.IgnoreIndex, prompt.Count), .. answer];
        return new EncodedExample(ids, labels);
    }

    /// <summary>
    /// Ids and labels of a multi-turn conversation (system?, user, assistant, ..., assistant), the loss on the assistant
    /// turns only. The model's chat template: the render tokenized whole, as apply_chat_template does, a token labelled
    /// where HF's assistant mask marks it (<see cref="AssistantTurns"/>): one example, or one per assistant turn for a
    /// template that renders earlier turns differently from the last. The tutorial and custom layouts: the exchanges'
    /// training examples one after another, the same text <see cref="FormatPrompt(IReadOnlyList{ChatMessage})"/> gives
    /// the history at inference.
    /// </summary>
    public IReadOnlyList<EncodedExample> EncodeConversation(IReadOnlyList<ChatMessage> messages)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (!messages.Any(m => m.Role == "assistant"))
            throw new PromptTemplateException("The conversation has no assistant turn, so there is nothing to learn from it.");
        if (_chat is null)
        {
            // An empty closing question makes the last exchange a whole one; that question is then left out.
            var exchanges = Exchanges([.. messages, ChatMessage.User("")]).SkipLast(1).Select(Encode).ToList();
            return [new EncodedExample([.. exchanges.SelectMany(e => e.InputIds)], [.. exchanges.SelectMany(e => e.Labels)])];
        }
        var examples = new List<EncodedExample>();
        foreach (var text in AssistantTurns.Find(_chat, WithSystem(messages)))
        {
            var ids = _tokenizer.Encode(text.Text, addSpecialTokens: false);
            var mask = AssistantMask.FromCharSpans(TokenOffsets.Of(_tokenizer, text.Text, ids), ids.Count, text.LossSpans);
            examples.Add(new EncodedExample([.. ids], ids.Select((id, t) => mask[t] == 1 ? id : EncodedExample.IgnoreIndex).ToArray()));
        }
        return examples;
    }

    /// <summary>The chat messages of a row: system (row's, else the setting's, else none), user, assistant.</summary>
    public IReadOnlyList<ChatMessage> Messages(QaRow row, bool withAnswer)
    {
        var messages = new List<ChatMessage>();
        string? system = string.IsNullOrWhiteSpace(row.System) ? Settings.SystemPrompt : row.System;
        if (!string.IsNullOrWhiteSpace(system)) messages.Add(ChatMessage.System(system));
        string user = string.IsNullOrWhiteSpace(row.Input) ? row.Instruction : row.Instruction + "\n\n" + row.Input;
        messages.Add(ChatMessage.User(user));
        if (withAnswer) messages.Add(ChatMessage.Assistant(row.Output));
        return messages;
    }

    private PromptPair FormatChat(QaRow row)
    {
        string prompt = _chat!.Render(Messages(row, withAnswer: false), addGenerationPrompt: true);
        string full = _chat.Render(Messages(row, withAnswer: true), addGenerationPrompt: false);
        if (full.StartsWith(prompt, StringComparison.Ordinal)) return new PromptPair(prompt, full[prompt.Length..]);
        // Templates whose generation prompt is not a prefix of the finished turn (e.g. thinking markers):
        // the answer starts where the assistant's text does.
        int at = row.Output.Length == 0 ? -1 : full.LastIndexOf(row.Output, StringComparison.Ordinal);
        if (at < 0)
            throw new PromptTemplateException("The model's chat template does not write the answer text as given, so the answer cannot be located for the loss. Choose the tutorial format or a custom template.");
        return new PromptPair(full[..at], full[at..]);
    }

    /// <summary>The ids the tokenizer puts before a text when adding special tokens (Llama's BOS; nothing for Qwen).</summary>
    private IReadOnlyList<int> SpecialPrefix(string text)
    {
        var with = _tokenizer.Encode(text, addSpecialTokens: true);
        var without = _tokenizer.Encode(text, addSpecialTokens: false);
        for (int start = 0; start + without.Count <= with.Count; start++)
        {
            bool match = true;
            for (int i = 0; i < without.Count && match; i++) match = with[start + i] == without[i];
            if (match) return with.Take(start).ToList();
        }
        return [];
    }

    /// <summary>One pass, so a question that itself contains "{input}" is left as written.</summary>
    private string Fill(string template, QaRow row) => PlaceholderPattern().Replace(template, m => m.Groups[1].Value switch
    {
        "instruction" => row.Instruction,
        "input" => row.Input,
        "system" => (string.IsNullOrWhiteSpace(row.System) ? Settings.SystemPrompt : row.System) ?? "",
        _ => m.Value,
    });

    [GeneratedRegex(@"\{([A-Za-z_][A-Za-z0-9_]*)\}")]
    private static partial Regex PlaceholderPattern();
}
