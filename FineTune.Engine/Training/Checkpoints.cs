using System.Globalization;
using System.Text.Json;
using System.Text.Json.Serialization;
using FineTune.Engine.Adapters;
using TorchSharp;

namespace FineTune.Engine.Training;

/// <summary>What a checkpoint records besides the weights (trainer_state.json).</summary>
public sealed record CheckpointState(
    int GlobalStep, int TotalSteps, int Seed, int TrainRows, int BatchSize, int GradientAccumulationSteps,
    double Epochs, List<StepRecord> History, double? LossScale = null);

/// <summary>
/// checkpoint-{step}/ folders: the adapter (PEFT format), the optimizer state (optimizer.safetensors: FlatAdamW's
/// step count and moments), and trainer_state.json (step, loss history, run shape). The learning-rate schedule and data
/// order are functions of the step and seed, and every step reseeds the RNG with seed + step, so these
/// are all a resume needs to continue the same loss curve.
/// </summary>
public static class Checkpoints
{
    public const string StateFile = "trainer_state.json";
    public const string OptimizerFile = "optimizer.safetensors";
    private const string OldOptimizerFile = "optimizer.bin"; // TorchSharp's AdamW state, written before FlatAdamW
    private const string Prefix = "checkpoint-";
    private const string PartialSuffix = ".partial";
    // Named literals: a step skipped for an fp16 overflow logs an inf/NaN gradient norm, and the state must still save.
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals };

    /// <summary>
    /// Writes checkpoint-{step}/ durably and returns its folder: everything goes to checkpoint-{step}.partial/, each
    /// file and the folder are flushed to the disk, the folder is renamed, and the rename is flushed. Only then does the
    /// caller get a path to record, and only then are older checkpoints pruned (never the one just written). A crash at
    /// any point leaves either the previous checkpoints or the new complete one, never a half one that looks complete.
    /// </summary>
    public static string Save(string checkpointsFolder, ITrainableCausalLM model, FlatAdamW optimizer,
        LoraSettings settings, string baseModel, CheckpointState state, int saveTotalLimit)
    {
        string folder = Path.Combine(checkpointsFolder, Prefix + state.GlobalStep.ToString(CultureInfo.InvariantCulture));
        string temporary = folder + PartialSuffix;
        try
        {
            if (Directory.Exists(temporary)) Directory.Delete(temporary, recursive: true);
            Directory.CreateDirectory(temporary);
            PeftAdapter.Save(temporary, model.NamedLinears(), settings, baseModel);
            optimizer.SaveState(Path.Combine(temporary, OptimizerFile));
            File.WriteAllText(Path.Combine(temporary, StateFile), JsonSerializer.Serialize(state, Json));
            DurableFiles.SyncFolder(temporary);
            if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
            Directory.Move(temporary, folder);
            DurableFiles.SyncDirectoryEntry(checkpointsFolder);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            TryDelete(temporary); // a full disk must not also leave a half folder taking the space
            throw new CheckpointException($"The checkpoint of step {state.GlobalStep} could not be written to '{checkpointsFolder}': {e.Message}", e);
        }
        Prune(checkpointsFolder, saveTotalLimit, keep: folder);
        return folder;
    }

    /// <summary>The newest complete checkpoint under <paramref name="checkpointsFolder"/> and its step, or null.</summary>
    public static (string Folder, int Step)? LatestComplete(string checkpointsFolder)
    {
        if (!Directory.Exists(checkpointsFolder)) return null;
        var all = List(checkpointsFolder);
        return all.Count == 0 ? null : (all[^1].Folder, all[^1].Step);
    }

    /// <summary>The newest complete checkpoint folder, or null.</summary>
    public static string? Latest(string checkpointsFolder)
    {
        if (!Directory.Exists(checkpointsFolder)) return null;
        return List(checkpointsFolder).LastOrDefault().Folder;
    }

    public static CheckpointState ReadState(string checkpointFolder)
    {
        string path = Path.Combine(checkpointFolder, StateFile);
        if (!File.Exists(path)) throw new CheckpointException($"'{checkpointFolder}' is not a checkpoint: it has no {StateFile}.");
        try
        {
            return JsonSerializer.Deserialize<CheckpointState>(File.ReadAllText(path), Json)
                   ?? throw new CheckpointException($"{path} is empty.");
        }
        catch (JsonException e)
        {
            throw new CheckpointException($"{path} cannot be read ({e.Message}); the checkpoint is damaged. Resume from an older one or start again.", e);
        }
    }

    /// <summary>Loads adapter weights and optimizer state of a checkpoint into a model that already has adapters attached.</summary>
    public static CheckpointState Restore(string checkpointFolder, ITrainableCausalLM model, FlatAdamW optimizer)
    {
        var state = ReadState(checkpointFolder);
        PeftAdapter.Load(checkpointFolder, model.NamedLinears());
        string optimizerPath = Path.Combine(checkpointFolder, OptimizerFile);
        if (!File.Exists(optimizerPath))
            throw new CheckpointException(File.Exists(Path.Combine(checkpointFolder, OldOptimizerFile))
                ? $"'{checkpointFolder}' was made by an older FineTune ({OldOptimizerFile}) and cannot be resumed; its adapter can still be used. Start a new run."
                : $"'{checkpointFolder}' has no {OptimizerFile}; it cannot be resumed.");
        optimizer.LoadState(optimizerPath);
        return state;
    }

    private static List<(int Step, string Folder)> List(string checkpointsFolder) =>
        [.. Directory.GetDirectories(checkpointsFolder, Prefix + "*")
            .Select(d => (Name: Path.GetFileName(d), Folder: d))
            .Where(d => !d.Name.EndsWith(PartialSuffix, StringComparison.Ordinal) && File.Exists(Path.Combine(d.Folder, StateFile)))
            .Select(d => (Step: int.TryParse(d.Name[Prefix.Length..], NumberStyles.None, CultureInfo.InvariantCulture, out int s) ? s : -1, d.Folder))
            .Where(d => d.Step >= 0)
            .OrderBy(d => d.Step)];

    /// <summary>
    /// Keeps the <paramref name="limit"/> newest checkpoints, always including <paramref name="keep"/> (the one just
    /// written: after resuming from an older checkpoint, newer leftovers of the abandoned run must go, not it), and
    /// removes the .partial folders an interrupted save left behind.
    /// </summary>
    private static void Prune(string checkpointsFolder, int limit, string keep)
    {
        foreach (string partial in Directory.GetDirectories(checkpointsFolder, Prefix + "*" + PartialSuffix))
            TryDelete(partial);
        if (limit <= 0) return;
        var all = List(checkpointsFolder);
        int keptStep = all.FirstOrDefault(c => c.Folder == keep).Step;
        var others = all.Where(c => c.Folder != keep)
            .OrderBy(c => c.Step > keptStep ? 0 : 1) // abandoned ones (newer than the one written) first
            .ThenBy(c => c.Step)
            .ToList();
        foreach (var (_, folder) in others.Take(Math.Max(0, all.Count - limit)))
            TryDelete(folder);
    }

    private static void TryDelete(string folder)
    {
        try
        {
            if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            // Left for the next save's pruning; never worth failing a training step for.
        }
    }
}
