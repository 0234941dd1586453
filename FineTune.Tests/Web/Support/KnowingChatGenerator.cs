using System.Runtime.CompilerServices;
using FineTune.Engine.Generation;
using FineTune.Web.Features.Chat;

namespace FineTune.Tests.Web.Support;

/// <summary>
/// A chat generator without a model for the "did it learn?" check: the fine-tuned model (a request with an adapter)
/// answers with the expected answer it was given for the question, the base model with <see cref="BaseAnswer"/>.
/// Records every request.
/// </summary>
public sealed class KnowingChatGenerator(IReadOnlyDictionary<string, string> answers) : IChatGenerator
{
    public const string BaseAnswer = "我不知道。";
    private readonly List<ChatRequest> _requests = [];

    public IReadOnlyList<ChatRequest> Requests { get { lock (_requests) return [.. _requests]; } }

    /// <summary>Held until released, for tests that look at a check while it asks.</summary>
    public TaskCompletionSource? Gate { get; set; }

    public async IAsyncEnumerable<TextPiece> StreamAsync(ChatRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        lock (_requests) _requests.Add(request);
        if (Gate is { } gate) await gate.Task.WaitAsync(cancellationToken);
        await Task.Yield();
        string text = request.AdapterDirectory is null ? BaseAnswer : answers.GetValueOrDefault(request.Messages[^1].Content, "?");
        yield return new TextPiece(text, 10, text.Length, FinishReason.Stop);
    }
}
