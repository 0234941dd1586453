namespace FineTune.Engine.Tokenization;

/// <summary>A text to train on and the character spans of it (UTF-16 start, end) that the loss is taken on.</summary>
public sealed record TrainingText(string Text, IReadOnlyList<(int Start, int End)> LossSpans);

/// <summary>
/// Where the assistant's turns are in a rendered conversation, for assistant-only loss (TRL's assistant_only_loss).
/// <list type="number">
/// <item>A template with {% generation %} markers: its marked spans, exactly as transformers'
/// return_assistant_tokens_mask finds them (one text).</item>
/// <item>Most models ship none (Qwen, Llama, Mistral). Then turn i's span is what rendering messages[..i+1] adds to
/// rendering messages[..i] with the generation prompt: the assistant's text and its end-of-turn tokens
/// ("answer&lt;|im_end|&gt;\n", "answer&lt;|eot_id|&gt;", "answer&lt;/s&gt;"), the header that cues the turn left out, as TRL's
/// generation-marked training templates place it. When every such render is a prefix of the whole conversation's
/// render (the template is prefix-preserving), that is one text with one span per assistant turn.</item>
/// <item>Templates that render earlier turns differently from the last (Qwen3 drops the thinking block of turns
/// before the last question) are not prefix-preserving: each assistant turn becomes a text of its own, the
/// conversation up to it rendered as at inference, with the loss on that last turn only.</item>
/// </list>
/// </summary>
public static class AssistantTurns
{
    public static IReadOnlyList<TrainingText> Find(ChatTemplate template, IReadOnlyList<ChatMessage> messages, IReadOnlyDictionary<string, object?>? variables = null)
    {
        if (template.HasGenerationMarkers)
        {
            var rendered = template.RenderTracked(messages, addGenerationPrompt: false, variables);
            return [new TrainingText(rendered.Text, rendered.GenerationSpans)];
        }

        string whole = template.Render(messages, addGenerationPrompt: false, variables);
        var turns = new List<(string Before, string Through, ChatMessage Turn)>();
        for (int i = 0; i < messages.Count; i++)
        {
            if (messages[i].Role != "assistant") continue;
            var history = messages.Take(i).ToList();
            turns.Add((template.Render(history, addGenerationPrompt: true, variables),
                       template.Render([.. history, messages[i]], addGenerationPrompt: false, variables), messages[i]));
        }

        if (turns.All(t => t.Through.StartsWith(t.Before, StringComparison.Ordinal) && whole.StartsWith(t.Through, StringComparison.Ordinal)))
            return [new TrainingText(whole, turns.Select(t => (t.Before.Length, t.Through.Length)).ToList())];

        return turns.Select(t => new TrainingText(t.Through, [(TurnStart(t.Before, t.Through, t.Turn), t.Through.Length)])).ToList();
    }

    /// <summary>Where the last turn starts in its own render: after the generation prompt, else where its text is written.</summary>
    private static int TurnStart(string before, string through, ChatMessage turn)
    {
        if (through.StartsWith(before, StringComparison.Ordinal)) return before.Length;
        int at = turn.Content.Length == 0 ? -1 : through.LastIndexOf(turn.Content, StringComparison.Ordinal);
        return at >= 0 ? at : throw new PromptTemplateException(
            "The model's chat template does not write the assistant's text as given, so its tokens cannot be found for the loss.");
    }
}
