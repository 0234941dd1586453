using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FineTune.Engine.Training;

/// <summary>
/// TensorBoard event files of a run (TorchSharp's SummaryWriter, the tfevents format `tensorboard --logdir` reads),
/// fed by the same progress reports as the console, the database and the page, with the tag names HF Trainer's
/// TensorBoard callback uses: train/loss, train/learning_rate, train/grad_norm, train/epoch, eval/loss, plus
/// train/tokens_per_second. Reports pass on to <paramref name="next"/> unchanged.
/// </summary>
public sealed class TensorBoardLog(string folder, IProgress<TrainingProgress>? next = null) : IProgress<TrainingProgress>, IDisposable
{
    /// <summary>The folder name beside loss.csv in an adapter folder.</summary>
    public const string FolderName = "tensorboard";

    private readonly SummaryWriter _writer = CreateWriter(folder);
    private readonly Lock _gate = new();

    public string Folder { get; } = folder;

    public void Report(TrainingProgress p)
    {
        lock (_gate)
        {
            if (p.Loss is double loss) _writer.add_scalar("train/loss", (float)loss, p.Step);
            if (p.LearningRate is double lr) _writer.add_scalar("train/learning_rate", (float)lr, p.Step);
            if (p.GradNorm is double norm) _writer.add_scalar("train/grad_norm", (float)norm, p.Step);
            if (p.TokensPerSecond is double speed) _writer.add_scalar("train/tokens_per_second", (float)speed, p.Step);
            if (p.Loss is not null) _writer.add_scalar("train/epoch", (float)p.Epoch, p.Step);
            if (p.EvalLoss is double eval) _writer.add_scalar("eval/loss", (float)eval, p.Step);
        }
        next?.Report(p);
    }

    public void Dispose() { } // SummaryWriter appends and flushes each event; it holds no open file

    private static SummaryWriter CreateWriter(string folder)
    {
        Directory.CreateDirectory(folder);
        return utils.tensorboard.SummaryWriter(folder, createRunName: false);
    }
}
