using System.Text;
using FineTune.Engine.Generation;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Chat;
using FineTune.Web.Features.Data;
using FineTune.Web.Features.Engine;
using FineTune.Web.Features.Settings;
using FineTune.Web.Features.Wizard;
using Microsoft.Extensions.Logging.Abstractions;

namespace FineTune.Tests.Web.Features.Wizard;

public sealed class WizardDraftStoreTests : IDisposable
{
    private readonly RunTestServices _runs = new();
    private readonly DataImporter _importer = new(new ExcelTableReader(NullLogger<ExcelTableReader>.Instance));
    private static readonly BrowserId Browser = new("0123456789abcdef0123456789abcdef");

    public void Dispose() => _runs.Dispose();

    /// <summary>A new store is what a new circuit (reload, language switch) or a restarted server gets.</summary>
    private WizardDraftStore NewStore() => new(_runs.Contexts, _importer, new TokenCounter(NullLogger<TokenCounter>.Instance), NullLogger<WizardDraftStore>.Instance);

    [Fact]
    public async Task The_test_chat_survives_a_new_circuit_and_belongs_to_its_run()
    {
        var state = new WizardState { RunId = 7, Step = WizardStep.Test };
        var chat = state.TestChatOf(7);
        chat.System = "你是客服。";
        (state.TestMaxNewTokens, state.TestSampling) = (12, (0.3, 0.8));
        chat.Restore([
            new ChatExchange("可以退貨嗎？", ChatAnswer.Of("七天內可以。", 24, 6, FinishReason.Stop)) { Base = ChatAnswer.Of("不知道", 24, 3, FinishReason.Length) },
            new ChatExchange("運費誰付？", ChatAnswer.Of("我們付", 40, 3, null)),
        ]);
        await NewStore().SaveAsync(Browser, state);

        var restored = new WizardState();
        Assert.True(await NewStore().RestoreAsync(Browser, restored));

        var kept = restored.TestChatOf(7);
        Assert.Equal("你是客服。", kept.System);
        Assert.Equal((12, (0.3, 0.8)), (restored.TestMaxNewTokens, restored.TestSampling));
        Assert.Equal(["可以退貨嗎？", "運費誰付？"], kept.Exchanges.Select(e => e.Question));
        var first = kept.Exchanges[0];
        Assert.Equal(("七天內可以。", 24, 6, (FinishReason?)FinishReason.Stop), (first.FineTuned.Text, first.FineTuned.PromptTokens, first.FineTuned.CompletionTokens, first.FineTuned.Finish));
        Assert.Equal(("不知道", (FinishReason?)FinishReason.Length), (first.Base!.Text, first.Base.Finish));
        Assert.Null(kept.Exchanges[1].Base);
        Assert.Null(kept.Exchanges[1].FineTuned.Finish);
        // The next question is asked with the kept history.
        Assert.Equal(["system", "user", "assistant", "user", "assistant", "user"], kept.Messages("還有嗎？", fineTuned: true).Select(m => m.Role));

        // Another run's test step starts a conversation of its own; a new wizard forgets the chat.
        Assert.Empty(restored.TestChatOf(8).Exchanges);
        restored.Reset();
        Assert.Null(restored.TestChatRunId);
        Assert.Null(WizardDraftState.Of(restored).TestChat);
    }

    [Fact]
    public async Task Model_file_encoding_mapping_row_edits_settings_and_step_survive_a_new_circuit()
    {
        Encoding.RegisterProvider(CodePagesEncodingProvider.Instance);
        byte[] bytes = Encoding.GetEncoding(936).GetBytes("问题,备注,回答\r\n问一,x,答一\r\n问二,y,\r\n问三,z,答三\r\n");
        var state = new WizardState { Settings = new TrainingSettings { Model = "Qwen/Qwen2.5-1.5B-Instruct", LoraR = 8, Epochs = 5 } };
        state.File = _importer.Parse(bytes, "zh-cn.csv");
        state.OriginalFile = bytes;
        state.Dataset = new DatasetDraft(_importer.Build(state.File, new ImportSettings(0, new ColumnMapping(0, 0, 2))));
        state.Dataset.Fix(3, "问二", "答二（补上）");
        state.Dataset.SetExcluded(4, true);
        state.Step = WizardStep.Settings;
        await NewStore().SaveAsync(Browser, state);

        var restored = new WizardState();
        Assert.True(await NewStore().RestoreAsync(Browser, restored));

        Assert.Equal(("Qwen/Qwen2.5-1.5B-Instruct", 8, 5), (restored.Settings.Model, restored.Settings.LoraR, restored.Settings.Epochs));
        Assert.Equal(WizardStep.Settings, restored.Step);
        Assert.Equal(bytes, restored.OriginalFile);
        Assert.Equal(TextEncoding.Gb18030, restored.File!.Encoding);
        Assert.Equal(new ColumnMapping(0, 0, 2), restored.Dataset!.Import.Mapping);
        Assert.Equal(new[] { ("问一", "答一"), ("问二", "答二（补上）") }, restored.Dataset.FinalRows.Select(r => (r.Instruction, r.Output)));
        Assert.True(restored.Dataset.IsExcluded(4));
    }

    [Fact]
    public async Task Each_browser_has_its_own_draft_and_an_unknown_browser_none()
    {
        var state = new WizardState { Settings = new TrainingSettings { LoraR = 4 } };
        await NewStore().SaveAsync(Browser, state);
        var store = NewStore();
        state.Settings.LoraR = 64;
        await store.SaveAsync(new BrowserId("ffffffffffffffffffffffffffffffff"), state);

        var mine = new WizardState();
        Assert.True(await NewStore().RestoreAsync(Browser, mine));
        Assert.Equal(4, mine.Settings.LoraR);
        Assert.False(await NewStore().RestoreAsync(new BrowserId("00000000000000000000000000000000"), new WizardState()));
    }
}
