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
    int MaxNewTokens = ChatRequest.DefaultMaxNewTokens,
    double Temperature = ChatRequest.DefaultTemperature,
    double TopP = ChatRequest.DefaultTopP,
    bool FourBit = false,
    bool DoubleQuantization = true,
    PromptTemplateSettings? Template = null)
{
    /// <summary>The chat's sampling until someone changes it: the test step, its saved draft, the API snippet and the OpenAI-compatible API's omitted fields.</summary>
    public const int DefaultMaxNewTokens = 256;
    public const double DefaultTemperature = 0.7;
    public const double DefaultTopP = 0.9;

    /// <summary>
    /// A question to a run's model as it was trained: the base model, its 4-bit loading and its prompt layout from the run's
    /// settings, with the adapter in <paramref name="adapterDirectory"/> (null: the base model alone). The one mapping from
    /// a run to a request, for the test step (chat and batch test), the learning check and the OpenAI-compatible API.
    /// </summary>
    public static ChatRequest ForRun(TrainingSettings run, string? adapterDirectory, IReadOnlyList<ChatMessage> messages,
        int maxNewTokens = DefaultMaxNewTokens, double temperature = DefaultTemperature, double topP = DefaultTopP) =>
        new(run.Model, run.Source, adapterDirectory, messages, maxNewTokens, temperature, topP,
            FourBit: run.FourBit, DoubleQuantization: run.DoubleQuantization, Template: run.ToPromptTemplate());

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
