using FineTune.Engine.Backend;
using FineTune.Engine.Generation;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Chat;
using FineTune.Web.Features.Engine;
using FineTune.Web.Features.Models;
using FineTune.Web.Features.Settings;
using FineTune.Web.Infrastructure;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging.Abstractions;

namespace FineTune.Tests.Web.Features.Engine;

/// <summary>The test step's conversation through the engine's generator on the real qwen2 fixture (CPU).</summary>
[Trait(Category.Name, Category.Slow)]
public sealed class EngineChatGeneratorTests : IDisposable
{
    private readonly string _data = Directory.CreateTempSubdirectory("finetune-chat-").FullName;
    private readonly ServiceProvider _services = new ServiceCollection().AddLogging().AddHttpClient().BuildServiceProvider();
    private readonly EngineModels _models;

    public EngineChatGeneratorTests()
    {
        var folders = new LocalModelFolders(new DataPaths(_data, [TestFiles.Fixture("models")]));
        var downloads = new ModelDownloadService(_services.GetRequiredService<IHttpClientFactory>(), new FineTune.Engine.Hub.HubOptions(),
            NullLogger<ModelDownloadService>.Instance, NullLoggerFactory.Instance);
        _models = new EngineModels(ComputeBackend.Initialize(), folders, downloads, NullLoggerFactory.Instance);
    }

    public void Dispose()
    {
        _services.Dispose();
        Directory.Delete(_data, recursive: true);
    }

    [Theory]
    [InlineData(PromptStyle.Tutorial)]
    [InlineData(PromptStyle.ModelChatTemplate)]
    public async Task The_second_answer_is_the_models_greedy_continuation_of_the_two_turn_prompt(PromptStyle style)
    {
        string folder = TestFiles.Fixture("models/qwen2");
        var template = new PromptTemplateSettings(style);
        using var generator = new EngineChatGenerator(_models);
        var conversation = new ChatConversation { System = "你是客服。" };
        ChatRequest Request(IReadOnlyList<ChatMessage> messages, bool fineTuned) =>
            new(folder, ModelSource.Local, null, messages, MaxNewTokens: 6, Temperature: 0, Template: template);

        var first = await conversation.AskAsync(generator, Request, "可以退貨嗎？", false, () => Task.CompletedTask, CancellationToken.None);
        var second = await conversation.AskAsync(generator, Request, "運費誰付？", false, () => Task.CompletedTask, CancellationToken.None);

        // The same model, loaded apart and given the two-turn conversation as the template renders it, answers the same.
        var tokenizer = TokenizerLoader.Load(folder);
        var twoTurns = PromptTemplate.Create(template, tokenizer).EncodePrompt(
            [ChatMessage.System("你是客服。"), ChatMessage.User("可以退貨嗎？"), ChatMessage.Assistant(first.FineTuned.Text), ChatMessage.User("運費誰付？")]);
        using var model = _models.Load(folder, _models.ComputeDtype(Precision.Auto), false, true); // as the generator loads it
        model.eval();
        var text = new TextGenerator(new FineTune.Engine.Generation.Generator(model), tokenizer);
        var settings = text.DefaultSettings(folder) with { MaxNewTokens = 6, DoSample = false, Temperature = 1.0, TopP = 0.9 };
        var expected = new List<TextPiece>();
        await foreach (var piece in text.StreamPiecesAsync(twoTurns, settings)) expected.Add(piece);

        Assert.Equal(twoTurns.Count, second.FineTuned.PromptTokens);
        Assert.True(second.FineTuned.PromptTokens > first.FineTuned.PromptTokens + 5);
        Assert.Equal(string.Concat(expected.Select(p => p.Text)), second.FineTuned.Text);
        Assert.Equal(expected[^1].GeneratedTokens, second.FineTuned.CompletionTokens);
        Assert.Equal(expected[^1].Finish, second.FineTuned.Finish);
    }
}
