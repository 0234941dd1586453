using System.Text.Json;
using System.Text.Json.Serialization;
using FineTune.Engine.Generation;
using FineTune.Web.Features.Chat;
using FineTune.Web.Features.Data;

namespace FineTune.Web.Features.Wizard;

/// <summary>
/// The wizard as one browser left it (model, uploaded file, sheet/columns/encoding, row edits, settings, step), kept in
/// SQLite so a reload, a language switch or a server restart loses nothing. One row per browser (cookie id).
/// The file's bytes are written only when the file changes; everything else is small JSON.
/// </summary>
public sealed class WizardDraft
{
    public string BrowserId { get; set; } = string.Empty;
    public DateTime UpdatedAt { get; set; }
    /// <summary>The small part, <see cref="WizardDraftState"/> as JSON.</summary>
    public string StateJson { get; set; } = "{}";
    public string? FileName { get; set; }
    public byte[]? FileBytes { get; set; }
}

/// <summary>A row fixed in the data step.</summary>
public sealed record DraftRowEdit(int Row, string Instruction, string Output);

/// <summary>One model's answer in the kept test chat.</summary>
public sealed record DraftChatAnswer(string Text, int PromptTokens, int CompletionTokens, FinishReason? Finish)
{
    public static DraftChatAnswer Of(ChatAnswer answer) => new(answer.Text, answer.PromptTokens, answer.CompletionTokens, answer.Finish);

    public ChatAnswer ToAnswer() => ChatAnswer.Of(Text, PromptTokens, CompletionTokens, Finish);
}

/// <summary>The test step's conversation with one run's model: its system prompt, exchanges and sampling.</summary>
public sealed record DraftChat(int RunId, string? System, IReadOnlyList<DraftChatExchange> Exchanges, int MaxNewTokens = ChatRequest.DefaultMaxNewTokens,
    double Temperature = ChatRequest.DefaultTemperature, double TopP = ChatRequest.DefaultTopP);

public sealed record DraftChatExchange(string Question, DraftChatAnswer FineTuned, DraftChatAnswer? Base);

/// <summary>What the draft holds besides the file.</summary>
public sealed record WizardDraftState(
    string SettingsJson,
    WizardStep Step,
    int? RunId,
    TextEncoding? Encoding,
    int SheetIndex,
    ColumnMapping? Mapping,
    IReadOnlyList<int> ExcludedRows,
    IReadOnlyList<DraftRowEdit> Edits,
    DraftChat? TestChat = null)
{
    private static readonly JsonSerializerOptions Json = new() { Converters = { new JsonStringEnumConverter() } };

    public string ToJson() => JsonSerializer.Serialize(this, Json);

    public static WizardDraftState? FromJson(string json)
    {
        try
        {
            return JsonSerializer.Deserialize<WizardDraftState>(json, Json);
        }
        catch (JsonException)
        {
            return null; // a draft written by an older version: start fresh rather than fail the page
        }
    }

    /// <summary>The draft of the current wizard state.</summary>
    public static WizardDraftState Of(WizardState state) => new(
        state.Settings.ToJson(),
        state.Step,
        state.RunId,
        state.File?.Encoding,
        state.Dataset?.Import.SheetIndex ?? 0,
        state.Dataset?.Import.Mapping,
        state.Dataset?.ExcludedRows.Order().ToArray() ?? [],
        state.Dataset?.EditedRows.OrderBy(e => e.Key).Select(e => new DraftRowEdit(e.Key, e.Value.Instruction, e.Value.Output)).ToArray() ?? [],
        state.TestChatRunId is { } runId && (state.TestChat.Exchanges.Count > 0 || !string.IsNullOrWhiteSpace(state.TestChat.System))
            ? new DraftChat(runId, state.TestChat.System, [.. state.TestChat.Exchanges.Select(e =>
                new DraftChatExchange(e.Question, DraftChatAnswer.Of(e.FineTuned), e.Base is null ? null : DraftChatAnswer.Of(e.Base)))],
                state.TestMaxNewTokens, state.TestSampling.Temperature, state.TestSampling.TopP)
            : null);

    /// <summary>Puts the kept test chat back into <paramref name="state"/>.</summary>
    public void RestoreTestChat(WizardState state)
    {
        if (TestChat is not { } chat) return;
        var conversation = state.TestChatOf(chat.RunId);
        conversation.System = chat.System;
        (state.TestMaxNewTokens, state.TestSampling) = (chat.MaxNewTokens, (chat.Temperature, chat.TopP));
        conversation.Restore(chat.Exchanges.Select(e => new ChatExchange(e.Question, e.FineTuned.ToAnswer()) { Base = e.Base?.ToAnswer() }));
    }
}
