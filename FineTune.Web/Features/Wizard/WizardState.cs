using FineTune.Web.Features.Chat;
using FineTune.Web.Features.Data;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.Wizard;

public enum WizardStep { Model = 0, Data = 1, Settings = 2, Train = 3, Test = 4, Download = 5 }

/// <summary>
/// What the user has chosen so far, for one browser tab (scoped to the Blazor circuit). Saved after every change as
/// the browser's draft (<see cref="WizardDraftStore"/>) and restored from it in a new circuit.
/// </summary>
public sealed class WizardState
{
    public TrainingSettings Settings { get; set; } = new();
    public DataFile? File { get; set; }
    public byte[]? OriginalFile { get; set; }
    public DatasetDraft? Dataset { get; set; }
    public int? RunId { get; set; }
    /// <summary>The step on screen, so a restored draft opens where the user was.</summary>
    public WizardStep Step { get; set; }

    /// <summary>The test step's conversation with run <see cref="TestChatRunId"/>'s model, kept in the draft like the rest.</summary>
    public ChatConversation TestChat { get; private set; } = new();
    public int? TestChatRunId { get; private set; }

    /// <summary>The test chat of <paramref name="runId"/>: the one kept for it, else a new one.</summary>
    public ChatConversation TestChatOf(int runId)
    {
        if (TestChatRunId != runId) (TestChat, TestChatRunId) = (new ChatConversation(), runId);
        return TestChat;
    }

    /// <summary>The sampling the test step last chatted with; the GGUF export's Modelfile takes it over.</summary>
    public (double Temperature, double TopP) TestSampling { get; set; } = (ChatRequest.DefaultTemperature, ChatRequest.DefaultTopP);

    /// <summary>The test step's answer length limit.</summary>
    public int TestMaxNewTokens { get; set; } = ChatRequest.DefaultMaxNewTokens;

    public bool HasModel => !string.IsNullOrWhiteSpace(Settings.Model);
    public bool HasData => Dataset is { FinalCount: > 0 };

    /// <summary>Which steps may be opened: later steps need the earlier ones done.</summary>
    public bool CanOpen(WizardStep step) => step switch
    {
        WizardStep.Model => RunId is null,
        WizardStep.Data => RunId is null && HasModel,
        WizardStep.Settings => RunId is null && HasModel && HasData,
        _ => RunId is not null,
    };

    public event Action? Changed;

    public void NotifyChanged() => Changed?.Invoke();

    /// <summary>Starts over for a new run, optionally from an earlier run's settings ("re-run with changes").</summary>
    public void Reset(TrainingSettings? settings = null)
    {
        Settings = settings?.Clone() ?? new TrainingSettings();
        File = null;
        OriginalFile = null;
        Dataset = null;
        RunId = null;
        Step = WizardStep.Model;
        (TestChat, TestChatRunId) = (new ChatConversation(), null);
        NotifyChanged();
    }
}
