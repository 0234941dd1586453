using FineTune.Web.Features.Data;
using FineTune.Web.Features.Engine;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using Microsoft.EntityFrameworkCore;

namespace FineTune.Web.Features.Wizard;

/// <summary>The browser a circuit belongs to (the value of <see cref="BrowserIdentity.CookieName"/>), cascaded from the app's root.</summary>
public sealed record BrowserId(string Value);

/// <summary>
/// Saves the wizard's state per browser after every change and restores it into a new circuit (reload, language
/// switch, server restart). Scoped: it remembers what it last wrote, so an unchanged state costs no write.
/// </summary>
public sealed class WizardDraftStore(IDbContextFactory<RunDbContext> contexts, DataImporter importer, TokenCounter tokens, ILogger<WizardDraftStore> logger)
{
    private string? _savedJson;
    private byte[]? _savedFile;
    private readonly SemaphoreSlim _writing = new(1, 1);

    /// <summary>Writes the state when it differs from what this circuit last wrote.</summary>
    public async Task SaveAsync(BrowserId browser, WizardState state, CancellationToken cancellationToken = default)
    {
        await _writing.WaitAsync(cancellationToken);
        try
        {
            await WriteAsync(browser, state, cancellationToken);
        }
        finally
        {
            _writing.Release();
        }
    }

    private async Task WriteAsync(BrowserId browser, WizardState state, CancellationToken cancellationToken)
    {
        string json = WizardDraftState.Of(state).ToJson();
        bool fileChanged = !ReferenceEquals(state.OriginalFile, _savedFile);
        if (json == _savedJson && !fileChanged) return;

        await using var db = await contexts.CreateDbContextAsync(cancellationToken);
        var now = DateTime.UtcNow;
        int updated = fileChanged
            ? await db.Drafts.Where(d => d.BrowserId == browser.Value).ExecuteUpdateAsync(u => u
                .SetProperty(d => d.StateJson, json).SetProperty(d => d.UpdatedAt, now)
                .SetProperty(d => d.FileName, state.File == null ? null : state.File.FileName).SetProperty(d => d.FileBytes, state.OriginalFile), cancellationToken)
            : await db.Drafts.Where(d => d.BrowserId == browser.Value).ExecuteUpdateAsync(u => u
                .SetProperty(d => d.StateJson, json).SetProperty(d => d.UpdatedAt, now), cancellationToken);
        if (updated == 0)
        {
            db.Drafts.Add(new WizardDraft { BrowserId = browser.Value, UpdatedAt = now, StateJson = json, FileName = state.File?.FileName, FileBytes = state.OriginalFile });
            await db.SaveChangesAsync(cancellationToken);
        }
        (_savedJson, _savedFile) = (json, state.OriginalFile);
    }

    /// <summary>Fills a fresh <paramref name="state"/> from the browser's draft; false when there is none (or it cannot be read any more).</summary>
    public async Task<bool> RestoreAsync(BrowserId browser, WizardState state, CancellationToken cancellationToken = default)
    {
        await using var db = await contexts.CreateDbContextAsync(cancellationToken);
        var draft = await db.Drafts.AsNoTracking().FirstOrDefaultAsync(d => d.BrowserId == browser.Value, cancellationToken);
        if (draft is null || WizardDraftState.FromJson(draft.StateJson) is not { } saved) return false;

        state.Settings = TrainingSettings.FromJson(saved.SettingsJson);
        state.Step = saved.Step;
        state.RunId = saved.RunId;
        saved.RestoreTestChat(state);
        if (draft.FileBytes is { } bytes && draft.FileName is { } name)
        {
            try
            {
                var file = importer.Parse(bytes, name, saved.Encoding);
                var mapping = saved.Mapping is { } m && m.Instruction < file.Sheets[Math.Clamp(saved.SheetIndex, 0, file.Sheets.Count - 1)].ColumnCount ? m : null;
                var dataset = new DatasetDraft(importer.Build(file, new ImportSettings(saved.SheetIndex, mapping,
                    state.Settings.MaxSeqLength, tokens.For(state.Settings)) { CountConversationTokens = tokens.ForConversations(state.Settings) }));
                foreach (int row in saved.ExcludedRows) dataset.SetExcluded(row, true);
                foreach (var edit in saved.Edits.Where(e => dataset.Import.Rows.Any(r => r.Row.SourceRow == e.Row)))
                    dataset.Fix(edit.Row, edit.Instruction, edit.Output);
                (state.File, state.OriginalFile, state.Dataset) = (file, bytes, dataset);
            }
            catch (DataImportException e)
            {
                logger.LogWarning("The saved draft's file {File} no longer imports: {Problem}", name, e.Message);
            }
        }
        (_savedJson, _savedFile) = (WizardDraftState.Of(state).ToJson(), state.OriginalFile);
        return true;
    }
}
