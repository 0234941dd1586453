using FineTune.Engine.Adapters;
using FineTune.Tests.Adapters;
using FineTune.Tests.Support;
using FineTune.Engine.Backend;
using FineTune.Engine.Training;
using FineTune.Tests.Web.Support;
using Microsoft.Extensions.Logging;
using static TorchSharp.torch;

namespace FineTune.Tests.Training;

/// <summary>
/// The pipeline decides auto gradient checkpointing before training (TrainingMemory.ResolveCheckpointing) against the
/// smallest GPU of the run, and the trainer, the outcome and the adapter's record get the decided value. On this CPU
/// machine a GPU's memory is given to the pipeline (its DeviceMemory), as a CUDA run reads it from the card.
/// </summary>
public sealed class FineTunePipelineCheckpointingTests : IDisposable
{
    private const long GiB = 1L << 30;
    private static readonly string Model = TestFiles.Fixture("models/qwen2");
    private readonly string _folder = TestPaths.NewTempFolder("pipeline-checkpointing");

    public FineTunePipelineCheckpointingTests() => _ = ComputeBackend.Current;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    /// <summary>A QLoRA job on the fixture model, auto checkpointing, one optimizer step.</summary>
    private static FineTuneJob Job() => TrainingTimeTests.Job(8) with
    {
        FourBit = true,
        ValidationFraction = 0,
        Training = TrainingTimeTests.Job(8).Training with { Epochs = 1, StopAfterSteps = 1, EvalSteps = 0, GradientCheckpointing = null },
    };

    [Theory]
    [Trait(Category.Name, Category.Slow)]
    [InlineData(80L * GiB, false)] // the fixture's few MB fit any GPU without recomputing
    [InlineData(1L, true)]         // nothing fits a one-byte GPU: checkpointing, the least memory
    [InlineData(null, true)]       // no GPU's memory (the CPU): the default with a 4-bit base
    public void The_run_trains_and_records_the_decided_value(long? gpuBytes, bool expected)
    {
        var logs = new RecordingLoggers();
        var pipeline = new FineTunePipeline(logs) { DeviceMemory = _ => gpuBytes };
        string adapter = Path.Combine(_folder, "adapter");
        var outcome = pipeline.Run(Job() with { OutputFolder = adapter });

        Assert.Equal(expected, outcome.GradientCheckpointing);
        var settings = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, AdapterExport.SettingsFile)))!;
        Assert.Equal(expected, settings["training"]!["gradient_checkpointing"]!.GetValue<bool>());
        string line = Assert.Single(logs.Lines, l => l.StartsWith("gradient checkpointing", StringComparison.Ordinal));
        Assert.StartsWith($"gradient checkpointing {(expected ? "on" : "off")}: ", line, StringComparison.Ordinal);
        if (gpuBytes is null) Assert.Contains("memory is unknown", line, StringComparison.Ordinal);
        else Assert.Contains("of the GPU's", line, StringComparison.Ordinal);
    }

    /// <summary>A GPU that holds the run with only the first of the fixture's 2 layers recomputed: the trainer recomputes that one in every micro-batch, and the adapter's record and the log say so.</summary>
    [Fact]
    [Trait(Category.Name, Category.Slow)]
    public void A_gpu_that_holds_the_run_with_some_layers_recomputed_gets_those_recomputed()
    {
        var probe = new FineTunePipeline { DeviceMemory = _ => 1L << 50 };
        long without = probe.ResolveCheckpointing(Job(), probe.Split(Job())).BytesWithout!.Value;
        long small = (long)(without / TrainingMemory.UsableShare) - 1;
        var logs = new RecordingLoggers();
        var pipeline = new FineTunePipeline(logs) { DeviceMemory = _ => small };
        string adapter = Path.Combine(_folder, "adapter");
        long before = FineTune.Engine.Models.GradientCheckpoint.CheckpointedCalls;
        var outcome = pipeline.Run(Job() with { OutputFolder = adapter });

        Assert.False(outcome.GradientCheckpointing);
        Assert.True(FineTune.Engine.Models.GradientCheckpoint.CheckpointedCalls - before > 0, "no layer was recomputed");
        var settings = System.Text.Json.Nodes.JsonNode.Parse(File.ReadAllText(Path.Combine(adapter, AdapterExport.SettingsFile)))!;
        Assert.False(settings["training"]!["gradient_checkpointing"]!.GetValue<bool>());
        Assert.Equal(0.5, settings["training"]!["checkpointed_layer_share"]!.GetValue<double>());
        string line = Assert.Single(logs.Lines, l => l.StartsWith("gradient checkpointing", StringComparison.Ordinal));
        Assert.StartsWith("gradient checkpointing on for the first 1 of 2 layers: ", line, StringComparison.Ordinal);
    }

    [Fact]
    public void An_explicit_setting_is_what_the_run_uses_whatever_the_gpu()
    {
        var pipeline = new FineTunePipeline { DeviceMemory = _ => 1 };
        var job = Job() with { Training = Job().Training with { GradientCheckpointing = false } };
        Assert.Equal(new CheckpointingChoice(false, CheckpointingReason.AsSet), pipeline.ResolveCheckpointing(job, pipeline.Split(job)));
    }

    [Fact]
    public void A_data_parallel_run_decides_against_its_smallest_gpu()
    {
        // Each replica holds the whole model: the run fits GPU 0 without checkpointing, GPU 1 only with some of it (the first of the fixture's 2 layers).
        var probe = new FineTunePipeline { DeviceMemory = _ => 1L << 50 };
        var job = Job() with { Devices = [new Device(TorchSharp.DeviceType.CUDA, 0), new Device(TorchSharp.DeviceType.CUDA, 1)] };
        var split = probe.Split(job);
        long without = probe.ResolveCheckpointing(job, split).BytesWithout!.Value;
        long small = (long)(without / TrainingMemory.UsableShare) - 1;
        var pipeline = new FineTunePipeline { DeviceMemory = d => d.index == 0 ? 80 * GiB : small };

        var choice = pipeline.ResolveCheckpointing(job, split);
        Assert.Equal(new CheckpointingChoice(false, CheckpointingReason.SomeLayers, without, small, 1, 2), choice);
        Assert.False(pipeline.ResolveCheckpointing(job with { Devices = null, Device = job.Devices![0] }, split).On);
        // A GPU whose memory is unknown leaves the run to the default (on with a 4-bit base).
        var unknown = new FineTunePipeline { DeviceMemory = d => d.index == 0 ? 80 * GiB : null };
        Assert.Equal(CheckpointingReason.DeviceUnknown, unknown.ResolveCheckpointing(job, split).Reason);
    }

    [Fact]
    public void Examples_given_as_tokens_are_estimated_at_their_longest_not_at_max_seq_length()
    {
        // The benchmark's examples are not cut to MaxSeqLength (1,024 by default): rows of 40 tokens need far less.
        var pipeline = new FineTunePipeline { DeviceMemory = _ => 80 * GiB };
        var rows = Enumerable.Range(0, 8).Select(i => new Engine.Data.TrainingExample([.. Enumerable.Range(1, 40)], [.. Enumerable.Range(2, 40)], i)).ToList();
        var job = Job() with { Examples = rows, MaxSeqLength = 1024 };
        var fromExamples = pipeline.ResolveCheckpointing(job, pipeline.Split(job)).BytesWithout!.Value;
        var atMaxLength = TrainingMemory.Estimate(Engine.Models.ModelFacts.Of(Model),
            new MemoryQuery(job.Lora, job.Training.BatchSize, 1024, FourBit: true, GradientCheckpointing: false, ComputeBytes: 4)).Total;
        var atLongest = TrainingMemory.Estimate(Engine.Models.ModelFacts.Of(Model),
            new MemoryQuery(job.Lora, job.Training.BatchSize, 40, FourBit: true, GradientCheckpointing: false, ComputeBytes: 4)).Total;
        Assert.Equal(atLongest, fromExamples);
        Assert.True(atLongest < atMaxLength);
    }

    /// <summary>Every log message of the pipeline, formatted.</summary>
    private sealed class RecordingLoggers : ILoggerFactory, ILoggerProvider
    {
        private readonly List<string> _lines = [];

        public IReadOnlyList<string> Lines
        {
            get { lock (_lines) return [.. _lines]; }
        }

        public ILogger CreateLogger(string categoryName) => new Logger(this);

        public void AddProvider(ILoggerProvider provider) { }

        public void Dispose() { }

        private sealed class Logger(RecordingLoggers owner) : ILogger
        {
            public IDisposable? BeginScope<TState>(TState state) where TState : notnull => null;

            public bool IsEnabled(LogLevel logLevel) => true;

            public void Log<TState>(LogLevel logLevel, EventId eventId, TState state, Exception? exception, Func<TState, Exception?, string> formatter)
            {
                lock (owner._lines) owner._lines.Add(formatter(state, exception));
            }
        }
    }
}
