using System.Text;
using FineTune.Engine.Generation;
using FineTune.Engine.Tokenization;

namespace FineTune.Web.Features.Chat;

/// <summary>One model's answer in the test chat, as it streams, with its token counts.</summary>
public sealed class ChatAnswer
{
    private readonly StringBuilder _text = new();

    public string Text => _text.ToString();
    public int PromptTokens { get; private set; }
    public int CompletionTokens { get; private set; }
    /// <summary>Null while streaming or when stopped by the user.</summary>
    public FinishReason? Finish { get; private set; }

    /// <summary>An answer as it was kept (the wizard's draft), to show again after a reload.</summary>
    public static ChatAnswer Of(string text, int promptTokens, int completionTokens, FinishReason? finish)
    {
        var answer = new ChatAnswer { PromptTokens = promptTokens, CompletionTokens = completionTokens, Finish = finish };
        answer._text.Append(text);
        return answer;
    }

    public void Add(TextPiece piece)
    {
        _text.Append(piece.Text);
        PromptTokens = piece.PromptTokens;
        CompletionTokens = piece.GeneratedTokens;
        Finish = piece.Finish ?? Finish;
    }
}

/// <summary>One question of the test chat and the answers of the fine-tuned model and, when compared, the base model.</summary>
public sealed class ChatExchange(string question, ChatAnswer? fineTuned = null)
{
    public string Question { get; } = question;
    public ChatAnswer FineTuned { get; } = fineTuned ?? new();
    public ChatAnswer? Base { get; set; }
}

/// <summary>
/// The test step's conversation: each question is asked with the earlier exchanges as history and the optional
/// system prompt first. Each model is given its own earlier answers; for an exchange asked while the comparison was
/// off, the base model is given the fine-tuned answer (the conversation the user saw).
/// </summary>
public sealed class ChatConversation
{
    private readonly List<ChatExchange> _exchanges = [];

    public IReadOnlyList<ChatExchange> Exchanges => _exchanges;

    /// <summary>The system prompt put before the conversation; blank: none (the template's default, if it has one).</summary>
    public string? System { get; set; }

    /// <summary>The conversation one model is given to answer <paramref name="question"/>.</summary>
    public IReadOnlyList<ChatMessage> Messages(string question, bool fineTuned)
    {
        var messages = new List<ChatMessage>();
        if (!string.IsNullOrWhiteSpace(System)) messages.Add(ChatMessage.System(System));
        foreach (var exchange in _exchanges)
        {
            messages.Add(ChatMessage.User(exchange.Question));
            var answer = fineTuned ? exchange.FineTuned : exchange.Base ?? exchange.FineTuned;
            messages.Add(ChatMessage.Assistant(answer.Text));
        }
        messages.Add(ChatMessage.User(question));
        return messages;
    }

    /// <summary>
    /// Asks <paramref name="question"/>: the fine-tuned model, then (when <paramref name="compare"/>) the base model, each
    /// with its history; <paramref name="changed"/> after each piece. The exchange stays in the conversation when
    /// stopped (its partial answer is history); it is taken out again when generation fails, so it can be asked again.
    /// </summary>
    public async Task<ChatExchange> AskAsync(
        IChatGenerator generator, Func<IReadOnlyList<ChatMessage>, bool, ChatRequest> request, string question, bool compare,
        Func<Task> changed, CancellationToken cancellationToken)
    {
        var fineTunedMessages = Messages(question, fineTuned: true);
        var baseMessages = Messages(question, fineTuned: false);
        var exchange = new ChatExchange(question) { Base = compare ? new ChatAnswer() : null };
        _exchanges.Add(exchange);
        try
        {
            await StreamAsync(generator, request(fineTunedMessages, true), exchange.FineTuned, changed, cancellationToken);
            if (exchange.Base is not null) await StreamAsync(generator, request(baseMessages, false), exchange.Base, changed, cancellationToken);
            return exchange;
        }
        catch (Exception e) when (e is not OperationCanceledException)
        {
            _exchanges.Remove(exchange);
            throw;
        }
    }

    /// <summary>A new conversation: the history goes, the system prompt stays.</summary>
    public void Clear() => _exchanges.Clear();

    /// <summary>Puts back exchanges kept earlier (the wizard's draft), after those already here.</summary>
    public void Restore(IEnumerable<ChatExchange> exchanges) => _exchanges.AddRange(exchanges);

    private static async Task StreamAsync(IChatGenerator generator, ChatRequest request, ChatAnswer answer, Func<Task> changed, CancellationToken cancellationToken)
    {
        await foreach (var piece in generator.StreamAsync(request, cancellationToken))
        {
            answer.Add(piece);
            await changed();
        }
    }
}
