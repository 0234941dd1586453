using FineTune.Engine.Tokenization.Jinja;

namespace FineTune.Engine.Tokenization;

/// <summary>One chat turn. Role is "system", "user" or "assistant" (templates may know "tool" too).</summary>
public sealed record ChatMessage(string Role, string Content)
{
    public static ChatMessage System(string content) => new("system", content);
    public static ChatMessage User(string content) => new("user", content);
    public static ChatMessage Assistant(string content) => new("assistant", content);
}

/// <summary>A rendered chat and where its {% generation %} blocks' text is (UTF-16 start, end).</summary>
public sealed record RenderedChat(string Text, IReadOnlyList<(int Start, int End)> GenerationSpans);

/// <summary>Token ids and HF's assistant mask (1 on the tokens the assistant writes, else 0).</summary>
public sealed record ChatEncoding(int[] InputIds, int[] AssistantMask);

/// <summary>The conversation format a template writes, detected from its text (for the UI and for defaults).</summary>
public enum ChatFormat { ChatMl, Llama3, Mistral, Other }

/// <summary>
/// A model's chat template rendered like HF <c>tokenizer.apply_chat_template</c>: the Jinja source from
/// chat_template.jinja / tokenizer_config.json, with messages, add_generation_prompt, tools=None and the
/// tokenizer's special token strings as variables. Qwen v1 ships no template; its ChatML (Qwen-7B-Chat's
/// make_context) is built in.
/// </summary>
public sealed class ChatTemplate
{
    /// <summary>Qwen (v1) chat format, as make_context builds it, with its default system prompt.</summary>
    public const string QwenV1ChatMl =
        "{%- if messages[0].role != 'system' %}{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}" +
        "{%- for m in messages %}{{ '<|im_start|>' + m.role + '\\n' + m.content + '<|im_end|>\\n' }}{% endfor %}" +
        "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    private readonly JinjaTemplate _template;
    private readonly ITextTokenizer? _tokenizer;

    public ChatTemplate(string source, ITextTokenizer? tokenizer = null)
    {
        Source = source;
        _tokenizer = tokenizer;
        _template = new JinjaTemplate(source);
        Format = source.Contains("<|im_start|>", StringComparison.Ordinal) ? ChatFormat.ChatMl
            : source.Contains("<|start_header_id|>", StringComparison.Ordinal) ? ChatFormat.Llama3
            : source.Contains("[INST]", StringComparison.Ordinal) ? ChatFormat.Mistral
            : ChatFormat.Other;
        DefaultSystemPrompt = DetectDefaultSystemPrompt();
    }

    /// <summary>The model's template (or Qwen v1's built-in ChatML); null when the model has none (base models of some families).</summary>
    public static ChatTemplate? ForTokenizer(ITextTokenizer tokenizer) =>
        tokenizer.ChatTemplate is { Length: > 0 } source ? new ChatTemplate(source, tokenizer)
        : tokenizer is QwenTiktokenTokenizer ? new ChatTemplate(QwenV1ChatMl, tokenizer)
        : null;

    public string Source { get; }

    public ChatFormat Format { get; }

    /// <summary>
    /// The system text the template writes when the messages have none: Qwen2.5's "You are Qwen, created by
    /// Alibaba Cloud...", Qwen2's "You are a helpful assistant."; null when it writes none (Qwen3, Llama 3).
    /// </summary>
    public string? DefaultSystemPrompt { get; }

    /// <summary>Fixes the clock templates read through strftime_now (Llama 3.2's "Today Date").</summary>
    public Func<DateTime> Now { get; init; } = () => DateTime.Now;

    /// <summary>True when the template marks what the assistant writes with {% generation %} blocks (HF's assistant masks).</summary>
    public bool HasGenerationMarkers => _template.HasGenerationBlocks;

    /// <param name="addGenerationPrompt">True for inference: end with the assistant header so the model answers.</param>
    /// <param name="variables">Extra template variables (e.g. enable_thinking=false for Qwen3).</param>
    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, IReadOnlyDictionary<string, object?>? variables = null) =>
        RenderTracked(messages, addGenerationPrompt, variables).Text;

    /// <summary>The render with the character spans of its {% generation %} blocks (none when the template has no markers).</summary>
    public RenderedChat RenderTracked(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt = false, IReadOnlyDictionary<string, object?>? variables = null)
    {
        var values = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["messages"] = messages.Select(m => (object?)new Dictionary<string, object?> { ["role"] = m.Role, ["content"] = m.Content }).ToList(),
            ["add_generation_prompt"] = addGenerationPrompt,
            ["tools"] = null,
            ["documents"] = null,
        };
        if (_tokenizer is not null)
        {
            // HF passes the special tokens map (only tokens that are set).
            if (_tokenizer.BosToken is { } bos) values["bos_token"] = bos;
            if (_tokenizer.EosToken is { } eos) values["eos_token"] = eos;
            if (_tokenizer.PadTokenId is { } padId && _tokenizer.IdToToken(padId) is { } pad) values["pad_token"] = pad;
        }
        if (variables is not null)
            foreach (var (k, v) in variables) values[k] = v;
        var (text, spans) = _template.RenderTracked(values, Now);
        return new RenderedChat(text, spans);
    }

    /// <summary>
    /// HF apply_chat_template(tokenize=True, return_dict=True, return_assistant_tokens_mask=True): the ids of the render and
    /// 1 on the tokens of its {% generation %} blocks (all 0 for a template without markers, as in transformers).
    /// </summary>
    public ChatEncoding EncodeWithAssistantMask(IReadOnlyList<ChatMessage> messages, IReadOnlyDictionary<string, object?>? variables = null)
    {
        if (_tokenizer is null) throw new InvalidOperationException("This chat template was created without a tokenizer.");
        var rendered = RenderTracked(messages, addGenerationPrompt: false, variables);
        var ids = _tokenizer.Encode(rendered.Text, addSpecialTokens: false);
        var mask = rendered.GenerationSpans.Count == 0 ? new int[ids.Count]
            : AssistantMask.FromCharSpans(TokenOffsets.Of(_tokenizer, rendered.Text, ids), ids.Count, rendered.GenerationSpans);
        return new ChatEncoding([.. ids], mask);
    }

    /// <summary>Render and tokenize as HF apply_chat_template(tokenize=True): the text is encoded without adding BOS again.</summary>
    public IReadOnlyList<int> Encode(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, IReadOnlyDictionary<string, object?>? variables = null)
    {
        if (_tokenizer is null) throw new InvalidOperationException("This chat template was created without a tokenizer.");
        return _tokenizer.Encode(Render(messages, addGenerationPrompt, variables), addSpecialTokens: false);
    }

    private string? DetectDefaultSystemPrompt()
    {
        const string probe = "\u0001probe\u0001";
        string rendered;
        try
        {
            rendered = _template.Render(new Dictionary<string, object?>
            {
                ["messages"] = new List<object?> { new Dictionary<string, object?> { ["role"] = "user", ["content"] = probe } },
                ["add_generation_prompt"] = false, ["tools"] = null, ["documents"] = null, ["bos_token"] = "", ["eos_token"] = "",
            }, Now);
        }
        catch (ChatTemplateException) { return null; }
        string before = rendered[..Math.Max(0, rendered.IndexOf(probe, StringComparison.Ordinal))];
        return Format switch
        {
            ChatFormat.ChatMl => Between(before, "<|im_start|>system\n", "<|im_end|>"),
            ChatFormat.Llama3 => Between(before, "<|start_header_id|>system<|end_header_id|>\n\n", "<|eot_id|>"),
            _ => null,
        };
    }

    private static string? Between(string text, string start, string end)
    {
        int s = text.IndexOf(start, StringComparison.Ordinal);
        if (s < 0) return null;
        s += start.Length;
        int e = text.IndexOf(end, s, StringComparison.Ordinal);
        return e < 0 ? null : text[s..e];
    }
}
