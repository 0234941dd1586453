using System.Runtime.CompilerServices;
using FineTune.Engine.Generation;
using FineTune.Engine.Tokenization;
using FineTune.Web.Features.Chat;

namespace FineTune.Tests.Web.Support;

/// <summary>
/// A chat generator without a model: records each request and answers "answer N" (N = 1, 2, ... over all requests) in
/// two pieces, with the prompt's token count from the run's template over the qwen2 fixture's tokenizer.
/// </summary>
public sealed class RecordingChatGenerator : IChatGenerator
{
    private readonly Lazy<ITextTokenizer> _tokenizer = new(() => TokenizerLoader.Load(TestFiles.Fixture("models/qwen2")));
    private readonly List<ChatRequest> _requests = [];

    public IReadOnlyList<ChatRequest> Requests { get { lock (_requests) return [.. _requests]; } }

    /// <summary>The text the model would have read for a request: its conversation in the request's template.</summary>
    public string RenderedPrompt(ChatRequest request) => PromptTemplate.Create(request.PromptTemplate, _tokenizer.Value).FormatPrompt(request.Messages);

    /// <summary>Released to let answers finish; set by tests that look at a conversation while it generates.</summary>
    public TaskCompletionSource? Gate { get; set; }

    public async IAsyncEnumerable<TextPiece> StreamAsync(ChatRequest request, [EnumeratorCancellation] CancellationToken cancellationToken)
    {
        int n;
        lock (_requests) { _requests.Add(request); n = _requests.Count; }
        int prompt = PromptTemplate.Create(request.PromptTemplate, _tokenizer.Value).EncodePrompt(request.Messages).Count;
        yield return new TextPiece("answer ", prompt, 1);
        if (Gate is { } gate) await gate.Task.WaitAsync(cancellationToken);
        await Task.Yield();
        yield return new TextPiece($"{n}", prompt, 2);
        yield return new TextPiece("", prompt, 3, FinishReason.Stop);
    }
}
