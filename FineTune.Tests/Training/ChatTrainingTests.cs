using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using FineTune.Engine.Training;
using FineTune.Tests.Adapters;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using static TorchSharp.torch;

namespace FineTune.Tests.Training;

/// <summary>A chat dataset through the one pipeline (FineTuneJob → examples with assistant-only labels → trainer) on the CPU.</summary>
[Trait(Category.Name, Category.Slow)]
public sealed class ChatTrainingTests : IDisposable
{
    private static readonly string Model = TestFiles.Fixture("models/qwen2");
    private readonly string _folder = TestPaths.NewTempFolder("chat-training");

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private static Conversation Chat(int i) => new(
    [
        ChatMessage.System("你是客服助理。"),
        ChatMessage.User($"請問第 {i} 家店的營業時間？"),
        ChatMessage.Assistant($"第 {i} 家店每天九點到六點營業。"),
        ChatMessage.User("Weekends too?"),
        ChatMessage.Assistant(i % 2 == 0 ? "Yes, every day." : "Only Saturdays."),
    ], SourceRow: i + 1);

    [Fact]
    public void A_chat_dataset_trains_with_loss_on_the_assistant_turns_only()
    {
        var conversations = Enumerable.Range(0, 6).Select(Chat).ToList();
        var job = new FineTuneJob
        {
            ModelFolder = Model,
            Conversations = conversations,
            Template = new PromptTemplateSettings(PromptStyle.ModelChatTemplate),
            MaxSeqLength = 256,
            ValidationFraction = 0,
            Device = CPU,
            ComputeDType = ScalarType.Float32,
            OutputFolder = Path.Combine(_folder, "adapter"),
            Training = new TrainingOptions { Epochs = 1, BatchSize = 2, GradientAccumulationSteps = 1, LearningRate = 1e-3, Seed = 3 },
        };
        var pipeline = new FineTunePipeline();

        // Every labelled target is a token of an assistant turn ("answer<|im_end|>\n"); system and user tokens carry -100.
        var examples = pipeline.BuildExamples(job).Examples;
        Assert.Equal(6, examples.Count);
        using var tokenizer = (TokenizerJson)TokenizerLoader.Load(Model);
        foreach (var example in examples)
        {
            var chat = conversations[example.SourceRow - 1];
            var expected = chat.Messages.Where(m => m.Role == "assistant")
                .SelectMany(m => tokenizer.Encode(m.Content + "<|im_end|>\n", addSpecialTokens: false)).ToArray();
            var learned = example.Targets.Where(t => t != TrainingExamples.IgnoreIndex).ToArray();
            Assert.Equal(expected, learned);
            int ignored = example.Targets.Count(t => t == TrainingExamples.IgnoreIndex);
            Assert.Equal(example.Length - expected.Length, ignored);
            // The targets sit where those tokens are: Targets[t] is InputIds[t + 1].
            for (int t = 0; t < example.Length - 1; t++)
                if (example.Targets[t] != TrainingExamples.IgnoreIndex) Assert.Equal(example.InputIds[t + 1], example.Targets[t]);
        }

        var outcome = pipeline.Run(job);

        Assert.Equal(3, outcome.Training.StepsDone);
        Assert.True(outcome.Training.Completed);
        Assert.All(outcome.Training.History, s => Assert.True(double.IsFinite(s.Loss) && s.Loss > 0, $"step {s.Step} loss {s.Loss}"));
        Assert.True(File.Exists(Path.Combine(job.OutputFolder, "adapter_model.safetensors")));
        Assert.Contains("6 examples of multi-turn conversations, the loss on the assistant's turns", File.ReadAllText(Path.Combine(job.OutputFolder, "README.md")));
    }
}
