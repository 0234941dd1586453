using FineTune.Engine.Tokenization;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.Chat;

/// <summary>One generation request. AdapterDirectory null: the base model alone. Template: the run's prompt template.</summary>
public sealed record ChatRequest(
    string Model,
    ModelSource Source,
    string? AdapterDirectory,
    string Prompt,
    int MaxNewTokens = 256,
    double Temperature = 0.7,
    double TopP = 0.9,
    string? System = null,
    bool FourBit = false,
    bool DoubleQuantization = true,
    PromptTemplateSettings? Template = null)
{
    /// <summary>The prompt layout the run was trained with (the tutorial's when not given).</summary>
    public PromptTemplateSettings PromptTemplate => Template ?? new(PromptStyle.Tutorial);
}

/// <summary>The web's door to the engine's generator: streams text pieces as tokens are decoded.</summary>
public interface IChatGenerator
{
    IAsyncEnumerable<string> StreamAsync(ChatRequest request, CancellationToken cancellationToken);
}

