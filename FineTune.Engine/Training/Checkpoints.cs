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
    // Named literals: a step skipped for an fp16 overflow logs an inf/NaN gradient norm, and the state must still save.
    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals };

    public static string Save(string checkpointsFolder, ITrainableCausalLM model, FlatAdamW optimizer,
        LoraSettings settings, string baseModel, CheckpointState state, int saveTotalLimit)
    {
        string folder = Path.Combine(checkpointsFolder, Prefix + state.GlobalStep.ToString(CultureInfo.InvariantCulture));
        string temporary = folder + ".partial";
        if (Directory.Exists(temporary)) Directory.Delete(temporary, recursive: true);
        Directory.CreateDirectory(temporary);
        PeftAdapter.Save(temporary, model.NamedLinears(), settings, baseModel);
        optimizer.SaveState(Path.Combine(temporary, OptimizerFile));
        File.WriteAllText(Path.Combine(temporary, StateFile), JsonSerializer.Serialize(state, Json));
        // Written whole, then renamed: a crash mid-save never leaves a half checkpoint that looks complete.
        if (Directory.Exists(folder)) Directory.Delete(folder, recursive: true);
        Directory.Move(temporary, folder);
        Prune(checkpointsFolder, saveTotalLimit);
        return folder;
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
            .Where(d => !d.Name.EndsWith(".partial", StringComparison.Ordinal) && File.Exists(Path.Combine(d.Folder, StateFile)))
            .Select(d => (Step: int.TryParse(d.Name[Prefix.Length..], NumberStyles.None, CultureInfo.InvariantCulture, out int s) ? s : -1, d.Folder))
            .Where(d => d.Step >= 0)
            .OrderBy(d => d.Step)];

    private static void Prune(string checkpointsFolder, int limit)
    {
        if (limit <= 0) return;
        var all = List(checkpointsFolder);
        foreach (var (_, folder) in all.Take(Math.Max(0, all.Count - limit)))
            Directory.Delete(folder, recursive: true);
    }
}
