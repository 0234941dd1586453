using System.Collections.Concurrent;
using FineTune.Engine.Data;
using FineTune.Engine.Hub;
using FineTune.Engine.Tokenization;
using FineTune.Web.Features.Data;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.Engine;

/// <summary>
/// Token counts of rows as training will see them (the run's PromptTemplate: prompt, answer, end token),
/// encoded by the model's own tokenizer when its folder is on disk; otherwise the estimate (TrainingEstimator.EstimateTokens).
/// </summary>
public sealed class TokenCounter(ILogger<TokenCounter> logger)
{
    private readonly ConcurrentDictionary<(string Folder, PromptTemplateSettings Template), PromptTemplate?> _templates = new();

    /// <summary>True when counts for these settings come from the real tokenizer.</summary>
    public bool IsExact(TrainingSettings settings) => Tokenizer(settings) is not null;

    public Func<QaRow, int> For(TrainingSettings settings)
    {
        var template = Tokenizer(settings);
        if (template is null) return TrainingEstimator.EstimateTokens;
        return row => template.Encode(row).InputIds.Length;
    }

    /// <summary>
    /// A conversation's tokens as training sees them: its longest example through the run's template (an estimate from its
    /// text when the model is not on disk). Throws when the model's template refuses the conversation.
    /// </summary>
    public Func<Conversation, int> ForConversations(TrainingSettings settings)
    {
        var template = Tokenizer(settings);
        if (template is null) return c => TrainingEstimator.EstimateTokens(ChatDatasetReader.SizingRow(c));
        return c => template.EncodeConversation(c.Messages).Max(e => e.InputIds.Length);
    }

    /// <summary>The training prompt template over the model's tokenizer, or null when the model is not on disk.</summary>
    private PromptTemplate? Tokenizer(TrainingSettings settings)
    {
        if (settings.Source != ModelSource.Local || !ModelReference.IsModelFolder(settings.Model)) return null;
        return _templates.GetOrAdd((Path.GetFullPath(settings.Model), settings.ToPromptTemplate()), key =>
        {
            var folder = key.Folder;
            try
            {
                return PromptTemplate.Create(key.Template, TokenizerLoader.Load(folder));
            }
            catch (Exception e) when (e is TokenizerLoadException or PromptTemplateException or IOException or InvalidDataException or System.Text.Json.JsonException)
            {
                logger.LogWarning(e, "No tokenizer in {Folder}; token counts are estimated", folder);
                return null;
            }
        });
    }
}
