using FineTune.Engine.Data;

namespace FineTune.Engine.Tokenization;

/// <summary>
/// Multi-turn prompts: a conversation (system?, user, assistant, ..., user) as the text the model continues.
/// <para>
/// The model's chat template renders the whole history natively, as HF
/// <c>apply_chat_template(messages, add_generation_prompt=True)</c>; the setting's system prompt is put first
/// when the conversation has none (as for single rows).
/// </para>
/// <para>
/// The tutorial and custom layouts hold one question and one answer. A conversation in them is its exchanges
/// one after another, each written exactly as the training example of that exchange (the tokenizer's BOS where
/// it adds one, prompt, answer, EOS), then the last question as a single-turn prompt. So every earlier turn
/// reads the way the model learned a question and its answer, ended by the EOS it learned to write after an
/// answer, and a one-question conversation gives the single-turn prompt byte for byte. The system text goes
/// where the layout has a place for it ({system} of a custom template) in every exchange, as in training rows;
/// the tutorial layout has none (<see cref="TakesSystemPrompt"/>).
/// </para>
/// </summary>
public sealed partial class PromptTemplate
{
    /// <summary>Whether the layout writes a system prompt: the chat template and custom templates with {system}; not the tutorial's.</summary>
    public static bool TakesSystemPrompt(PromptTemplateSettings settings) => settings.Style switch
    {
        PromptStyle.ModelChatTemplate => true,
        PromptStyle.Custom => settings.CustomTemplate?.Contains("{system}", StringComparison.Ordinal) == true,
        _ => false,
    };

    /// <summary>The text the model is given for the conversation's next assistant turn.</summary>
    public string FormatPrompt(IReadOnlyList<ChatMessage> conversation)
    {
        if (_chat is not null) return _chat.Render(WithSystem(conversation), addGenerationPrompt: true);
        var exchanges = Exchanges(conversation);
        string eos = _tokenizer.EosToken ?? "";
        return string.Concat(exchanges.SkipLast(1).Select(e => Format(e).Text + eos)) + FormatPrompt(exchanges[^1]);
    }

    /// <summary>Ids of the conversation as given to the model at inference; one user message (and a system one) gives <see cref="EncodePrompt(QaRow)"/>'s ids.</summary>
    public IReadOnlyList<int> EncodePrompt(IReadOnlyList<ChatMessage> conversation)
    {
        if (_chat is not null) return _tokenizer.Encode(FormatPrompt(conversation), addSpecialTokens: false);
        var exchanges = Exchanges(conversation);
        var ids = new List<int>();
        foreach (var exchange in exchanges.SkipLast(1)) ids.AddRange(Encode(exchange).InputIds);
        ids.AddRange(EncodePrompt(exchanges[^1]));
        return ids;
    }

    /// <summary>
    /// A conversation as question-answer rows for the one-exchange layouts: system messages joined as every row's
    /// System, each user turn with the assistant turn after it, the last row without an answer (consecutive turns of
    /// one role are joined with a blank line). Throws when the conversation has no user message or ends with another role.
    /// </summary>
    public static IReadOnlyList<QaRow> Exchanges(IReadOnlyList<ChatMessage> conversation)
    {
        ArgumentNullException.ThrowIfNull(conversation);
        var systems = conversation.Where(m => m.Role == "system" && !string.IsNullOrWhiteSpace(m.Content)).Select(m => m.Content).ToList();
        string? system = systems.Count == 0 ? null : string.Join("\n\n", systems);
        var turns = conversation.Where(m => m.Role != "system").ToList();
        if (turns.Count == 0 || turns[^1].Role != "user")
            throw new PromptTemplateException(turns.Count == 0
                ? "The conversation has no user message; it needs a question to answer."
                : $"The conversation's last message is from '{turns[^1].Role}'; it must end with the user's question for the model to answer.");

        var rows = new List<QaRow>();
        string? question = null, answer = null;
        foreach (var turn in turns)
        {
            switch (turn.Role)
            {
                case "user":
                    if (answer is not null) { rows.Add(new QaRow(question ?? "", answer, System: system)); question = answer = null; }
                    question = question is null ? turn.Content : question + "\n\n" + turn.Content;
                    break;
                case "assistant":
                    answer = answer is null ? turn.Content : answer + "\n\n" + turn.Content;
                    break;
                default:
                    throw new PromptTemplateException($"The conversation has a '{turn.Role}' message; the tutorial and custom layouts know system, user and assistant turns only.");
            }
        }
        rows.Add(new QaRow(question!, "", System: system));
        return rows;
    }

    /// <summary>Blank system messages dropped; the setting's system prompt first when none is left (as <see cref="Messages"/> does for a row).</summary>
    private List<ChatMessage> WithSystem(IReadOnlyList<ChatMessage> conversation)
    {
        var messages = conversation.Where(m => m.Role != "system" || !string.IsNullOrWhiteSpace(m.Content)).ToList();
        if (!string.IsNullOrWhiteSpace(Settings.SystemPrompt) && !messages.Any(m => m.Role == "system"))
            messages.Insert(0, ChatMessage.System(Settings.SystemPrompt));
        return messages;
    }
}
