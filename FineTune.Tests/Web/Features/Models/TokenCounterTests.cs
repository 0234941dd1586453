using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Engine;
using FineTune.Web.Features.Settings;
using Microsoft.Extensions.Logging.Abstractions;

namespace FineTune.Tests.Web.Features.Models;

public class TokenCounterTests
{
    private static readonly QaRow Row = new("你們的產品保固期是多久？", "我們的產品提供一年免費保固服務。");

    [Fact]
    public void A_local_model_counts_with_its_tokenizer_as_training_encodes_the_row()
    {
        string folder = TestFiles.Fixture("models/qwen2");
        var counter = new TokenCounter(NullLogger<TokenCounter>.Instance);
        var settings = new TrainingSettings { Source = ModelSource.Local, Model = folder };

        var template = PromptTemplate.Create(new PromptTemplateSettings(PromptStyle.Tutorial), TokenizerLoader.Load(folder));
        var example = TrainingExamples.Build([Row], template, new ExampleOptions(4096)).Examples.Single();

        Assert.True(counter.IsExact(settings));
        Assert.Equal(example.InputIds.Length, counter.For(settings)(Row));
    }

    [Fact]
    public void Hub_models_not_on_disk_are_estimated()
    {
        var counter = new TokenCounter(NullLogger<TokenCounter>.Instance);
        var settings = new TrainingSettings { Source = ModelSource.Preset, Model = "Qwen/Qwen2.5-0.5B-Instruct" };
        Assert.False(counter.IsExact(settings));
        Assert.Equal(TrainingEstimator.EstimateTokens(Row), counter.For(settings)(Row));
    }
}
