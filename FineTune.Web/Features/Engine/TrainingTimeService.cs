using FineTune.Engine.Data;
using FineTune.Engine.Training;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;

namespace FineTune.Web.Features.Engine;

/// <summary>A measured estimate and the settings and rows it was made for (the page shows it only while they still hold).</summary>
public sealed record MeasuredTime(TrainingTimeEstimate Estimate, string SettingsJson, int Rows);

/// <summary>
/// The settings page's time estimate, measured: the wizard's settings become the run's own <see cref="FineTuneJob"/>
/// (<see cref="EngineTrainingRunner.ToFineTuneJob"/>, so the same evaluation interval, template and device), and the engine
/// times a few real steps and validation batches of it (<see cref="FineTunePipeline.EstimateTime"/>). One measurement at a
/// time; none while a training holds the device, since both would slow each other and the numbers would be wrong.
/// </summary>
public sealed class TrainingTimeService(EngineModels models, ILoggerFactory loggers)
{
    /// <summary>Timed optimizer steps after the warm-up one.</summary>
    public const int MeasuredSteps = 3;

    private readonly SemaphoreSlim _one = new(1, 1);
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, MeasuredTime> _measured = new();

    /// <summary>The measurement made for exactly these settings, rows and GPUs, if one was (it survives a reload of the page).</summary>
    public MeasuredTime? Find(TrainingSettings settings, IReadOnlyList<QaRow> rows, IReadOnlyList<Conversation> conversations, IReadOnlyList<int> gpus) =>
        _measured.TryGetValue(Key(settings.ToJson(), rows, conversations, gpus), out var measured) ? measured : null;

    private static string Key(string settingsJson, IReadOnlyList<QaRow> rows, IReadOnlyList<Conversation> conversations, IReadOnlyList<int> gpus)
    {
        var hash = new HashCode();
        foreach (var row in rows) hash.Add(row);
        foreach (var message in conversations.SelectMany(c => c.Messages)) hash.Add(message);
        return $"{rows.Count}|{conversations.Count}|{hash.ToHashCode()}|{string.Join(",", gpus)}|{settingsJson}";
    }

    /// <summary>
    /// Measures the run these settings would start on <paramref name="rows"/> (Q&amp;A) or <paramref name="conversations"/> (chat
    /// data) on <paramref name="gpus"/> (<see cref="GpuPool.PlannedGpus"/>; empty: the backend's device). On several GPUs the
    /// engine times the first one's share of each step (<see cref="FineTunePipeline.EstimateTime"/>).
    /// </summary>
    public async Task<MeasuredTime> MeasureAsync(TrainingSettings settings, IReadOnlyList<QaRow> rows, IReadOnlyList<Conversation> conversations,
        IReadOnlyList<int> gpus, CancellationToken cancellationToken)
    {
        string settingsJson = settings.ToJson();
        string folder = await models.ResolveFolderAsync(settings, cancellationToken);
        var run = new TrainingJob(0, settings, rows, Path.GetTempPath(), Gpus: gpus.Count > 0 ? gpus : null) { Conversations = conversations };
        var job = new EngineTrainingRunner(models, loggers).ToFineTuneJob(run, folder)
            with { OutputFolder = null, CheckpointsFolder = null, ResumeFrom = null, MergedFolder = null };
        await _one.WaitAsync(cancellationToken);
        try
        {
            var estimate = await Task.Factory.StartNew(() => new FineTunePipeline(loggers).EstimateTime(job, MeasuredSteps, cancellationToken),
                cancellationToken, TaskCreationOptions.LongRunning, TaskScheduler.Default);
            var measured = new MeasuredTime(estimate, settingsJson, rows.Count + conversations.Count);
            if (_measured.Count > 32) _measured.Clear(); // a handful of settings tried per session; no need to keep old ones
            _measured[Key(settingsJson, rows, conversations, gpus)] = measured;
            return measured;
        }
        finally
        {
            _one.Release();
        }
    }
}
