using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Training;
using FineTune.Tests.Adapters;
using FineTune.Tests.Support;

namespace FineTune.Tests.Training;

/// <summary>Issue 18, finding 2 (engine side): a checkpoint is on the disk, complete, before anything names it.</summary>
public class CheckpointDurabilityTests
{
    public CheckpointDurabilityTests() => _ = ComputeBackend.Current;

    private static readonly LoraSettings Settings = new(Rank: 4, Alpha: 8, Dropout: 0.0, TargetModules: ["q_proj", "v_proj"]);

    private static TinyCausalLM ModelWithLora()
    {
        var model = new TinyCausalLM();
        LoraInjector.Attach(model.NamedLinears(), Settings, seed: 1);
        return model;
    }

    private static readonly TrainingOptions Options = new()
    {
        Epochs = 1, LearningRate = 1e-3, BatchSize = 1, GradientAccumulationSteps = 1, LoggingSteps = 2, SaveSteps = 2, SaveTotalLimit = 0,
    };

    [Fact]
    public void A_reported_step_is_already_a_complete_checkpoint_on_disk()
    {
        string folder = TestPaths.NewTempFolder("ckpt-report");
        try
        {
            var seen = new List<string>();
            var progress = new SyncProgress<TrainingProgress>(p => seen.Add($"{p.Step}:{Path.GetFileName(Checkpoints.Latest(folder))}"));
            using var model = ModelWithLora();
            new LoraTrainer(model, Settings, "tiny").Train(new DataSplit(TrainerTests.SyntheticRows(8), []), Options, progress, checkpointsFolder: folder);
            // Before: each report came before that step's save, so it named the previous checkpoint (or none).
            Assert.Equal(["2:checkpoint-2", "4:checkpoint-4", "6:checkpoint-6", "8:checkpoint-8"], seen);
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [Fact]
    public void Pruning_never_removes_the_checkpoint_just_written_and_clears_half_saves()
    {
        string folder = TestPaths.NewTempFolder("ckpt-prune");
        try
        {
            var data = new DataSplit(TrainerTests.SyntheticRows(10), []);
            using (var model = ModelWithLora())
                new LoraTrainer(model, Settings, "tiny").Train(data, Options, checkpointsFolder: folder); // 2, 4, 6, 8, 10, all kept
            Directory.CreateDirectory(Path.Combine(folder, "checkpoint-12.partial")); // a save a crash interrupted

            // Back to step 4 (an explicit --resume), with save_total_limit 2: the new checkpoint-6 is the one to keep.
            TrainingResult result;
            using (var model = ModelWithLora())
                result = new LoraTrainer(model, Settings, "tiny").Train(data, Options with { SaveTotalLimit = 2, StopAfterSteps = 2 },
                    checkpointsFolder: folder, resumeFrom: Path.Combine(folder, "checkpoint-4"));

            Assert.EndsWith("checkpoint-6", result.LastCheckpoint);
            Assert.True(Directory.Exists(result.LastCheckpoint), "the checkpoint the trainer returned was pruned");
            Assert.Equal(["checkpoint-4", "checkpoint-6"], Directory.GetDirectories(folder).Select(Path.GetFileName).Order());
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }

    [TinyDiskFact]
    public void A_full_disk_fails_the_save_cleanly_and_keeps_the_last_good_checkpoint()
    {
        using var disk = new TinyDisk(8 << 20);
        string folder = Path.Combine(disk.Folder, "checkpoints");
        var data = new DataSplit(TrainerTests.SyntheticRows(10), []);
        using (var model = ModelWithLora())
            new LoraTrainer(model, Settings, "tiny").Train(data, Options with { StopAfterSteps = 2 }, checkpointsFolder: folder);
        disk.Fill();

        using var again = ModelWithLora();
        var e = Assert.Throws<CheckpointException>(() => new LoraTrainer(again, Settings, "tiny")
            .Train(data, Options, checkpointsFolder: folder, resumeFrom: Path.Combine(folder, "checkpoint-2")));
        Assert.Contains("No space left", e.Message);
        Assert.Equal(["checkpoint-2"], Directory.GetDirectories(folder).Select(Path.GetFileName)); // no half checkpoint-4
        Assert.Equal(2, Checkpoints.ReadState(Checkpoints.Latest(folder)!).GlobalStep);
    }
}
