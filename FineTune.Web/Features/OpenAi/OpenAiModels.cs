using FineTune.Web.Features.Download;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.OpenAi;

/// <summary>
/// A model the API serves: a finished run (base + its adapter) or a base model some run used (no adapter). The run's
/// <paramref name="Settings"/> say which base model, from where, loaded how and prompted in which layout.
/// </summary>
public sealed record ServedModel(string Id, TrainingSettings Settings, string? AdapterDirectory, DateTime Created);

/// <summary>
/// The models of GET /v1/models: every finished run as "finetune-run-&lt;id&gt;" (its base model with its adapter, prompted
/// with the run's template) and every base model those runs were trained on, under the name the run used.
/// </summary>
public sealed class OpenAiModels(RunStore store, ArtifactPackager packager)
{
    public const string RunPrefix = "finetune-run-";

    public static string RunModelId(int runId) => $"{RunPrefix}{runId}";

    public async Task<IReadOnlyList<ServedModel>> ListAsync(CancellationToken cancellationToken)
    {
        var runs = (await store.ListAsync(cancellationToken)).Where(r => r.Status == RunStatus.Completed && packager.HasAdapter(r.Id)).OrderBy(r => r.Id).ToList();
        var served = new List<ServedModel>();
        foreach (var run in runs)
        {
            var settings = TrainingSettings.FromJson(run.SettingsJson);
            served.Add(new ServedModel(RunModelId(run.Id), settings, packager.AdapterDirectory(run.Id), run.EndedAt ?? run.CreatedAt));
        }
        foreach (var group in served.GroupBy(s => s.Settings.Model, StringComparer.Ordinal))
        {
            var first = group.First();
            served.Add(first with { Id = first.Settings.Model, AdapterDirectory = null, Created = group.Min(s => s.Created) });
        }
        return served;
    }

    public async Task<ServedModel?> FindAsync(string id, CancellationToken cancellationToken) =>
        (await ListAsync(cancellationToken)).FirstOrDefault(m => m.Id == id);
}
