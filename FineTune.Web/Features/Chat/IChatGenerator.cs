using FineTune.Engine.Generation;
using FineTune.Engine.Tokenization;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.Chat;

/// <summary>
/// One generation request: the conversation so far (system?, user, assistant, ..., user), answered with the next
/// assistant turn. AdapterDirectory null: the base model alone. Template: the run's prompt template, which renders
/// the conversation (<see cref="PromptTemplate.EncodePrompt(IReadOnlyList{ChatMessage})"/>).
/// </summary>
public sealed record ChatRequest(
    string Model,
    ModelSource Source,
    string? AdapterDirectory,
    IReadOnlyList<ChatMessage> Messages,
    int MaxNewTokens = 256,
    double Temperature = 0.7,
    double TopP = 0.9,
    bool FourBit = false,
    bool DoubleQuantization = true,
    PromptTemplateSettings? Template = null)
{
    /// <summary>The prompt layout the run was trained with (the tutorial's when not given).</summary>
    public PromptTemplateSettings PromptTemplate => Template ?? new(PromptStyle.Tutorial);

    /// <summary>A one-question conversation, with a system message first when <paramref name="system"/> is not blank.</summary>
    public static IReadOnlyList<ChatMessage> Question(string question, string? system = null) =>
        string.IsNullOrWhiteSpace(system) ? [ChatMessage.User(question)] : [ChatMessage.System(system), ChatMessage.User(question)];
}

/// <summary>
/// The web's door to the engine's generator: streams the answer's text pieces as tokens are decoded, with the token
/// counts so far; the last piece says why generation ended.
/// </summary>
public interface IChatGenerator
{
    IAsyncEnumerable<TextPiece> StreamAsync(ChatRequest request, CancellationToken cancellationToken);
}
