using System.Text;
using FineTune.Tests.Web.Support;
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
