using System.Globalization;
using System.Text.Json;
using FineTune.Engine.Backend;
using FineTune.Tests.Adapters;
using FineTune.Tests.Support;
using FineTune.Web.Headless;

namespace FineTune.Tests.Training;

/// <summary>
/// The tutorial's run (r 16, alpha 32 on q/k/v/o, 3 epochs, batch 1 × accumulation 4, lr 2e-4, linear schedule)
/// on the qwen2 fixture and the tutorial CSV, from the same initial adapter, against HF Trainer + PEFT's log:
/// Golden/loss_curve/hf_losses.json and init_adapter were made by tools/parity/loss_curve.py (init, then train)
/// with transformers 5.17 / peft 0.21, fp32 on the GPU machine's CPU. Dropout 0 on both sides (their RNGs differ).
/// </summary>
[Trait(Category.Name, Category.Parity)]
public class LossCurveParityTests
{
    private readonly Xunit.Abstractions.ITestOutputHelper _log;

    public LossCurveParityTests(Xunit.Abstractions.ITestOutputHelper log)
    {
        _ = ComputeBackend.Current;
        _log = log;
    }

    private static string Golden(params string[] parts) => TestPaths.InRepo(["FineTune.Tests", "Training", "Golden", "loss_curve", .. parts]);

    [Fact]
    public void Loss_learning_rate_and_grad_norm_follow_hf_trainer_step_for_step()
    {
        string folder = TestPaths.NewTempFolder("loss-curve");
        try
        {
            string zip = Path.Combine(folder, "ours.zip");
            using var output = new StringWriter();
            using var error = new StringWriter();
            int code = TrainCommand.Run(["train",
                "--model", TestPaths.InRepo("FineTune.Tests", "Fixtures", "models", "qwen2"),
                "--data", TestPaths.InRepo("samples", "tutorial-qa.csv"),
                "--output", zip, "--init-adapter", Golden("init_adapter"), "--dropout", "0", "--validation", "0",
                "--rank", "16", "--alpha", "32", "--epochs", "3", "--lr", "2e-4", "--batch", "1", "--accum", "4"], output, error);
            Assert.True(code == 0, error.ToString());

            using var hf = JsonDocument.Parse(File.ReadAllText(Golden("hf_losses.json")));
            var expected = hf.RootElement.GetProperty("steps").EnumerateArray().ToList();
            var ours = File.ReadAllLines(Path.Combine(TrainCommand.AdapterFolder(zip), "loss.csv")).Skip(1)
                .Select(line => line.Split(',')).ToList();
            Assert.Equal(expected.Count, ours.Count); // HF Trainer's number of optimizer steps
            double worstLoss = 0, worstGradNorm = 0;
            for (int i = 0; i < expected.Count; i++)
            {
                double Column(int c) => double.Parse(ours[i][c], CultureInfo.InvariantCulture);
                Assert.Equal(expected[i].GetProperty("step").GetInt32(), int.Parse(ours[i][0], CultureInfo.InvariantCulture));
                Assert.Equal(expected[i].GetProperty("loss").GetDouble(), Column(2), 1e-5);
                Assert.Equal(expected[i].GetProperty("learning_rate").GetDouble(), Column(3), 1e-12);
                Assert.Equal(expected[i].GetProperty("grad_norm").GetDouble(), Column(4), 1e-5);
                worstLoss = Math.Max(worstLoss, Math.Abs(expected[i].GetProperty("loss").GetDouble() - Column(2)));
                worstGradNorm = Math.Max(worstGradNorm, Math.Abs(expected[i].GetProperty("grad_norm").GetDouble() - Column(4)));
            }
            _log.WriteLine($"{expected.Count} steps; largest |loss difference| {worstLoss:G3}, largest |grad norm difference| {worstGradNorm:G3}");
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
