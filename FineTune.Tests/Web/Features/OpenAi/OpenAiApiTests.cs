using System.ClientModel;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Features.Runs;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.OpenAi;
using FineTune.Web.Features.Runs;
using FineTune.Web.Features.Settings;
using Microsoft.Extensions.DependencyInjection;
using OpenAI;
using OpenAI.Chat;
using OpenAI.Models;
using Xunit.Abstractions;
using ChatMessage = OpenAI.Chat.ChatMessage;
using Turn = FineTune.Engine.Tokenization.ChatMessage;

namespace FineTune.Tests.Web.Features.OpenAi;

/// <summary>The app's OpenAI-compatible API driven by the official OpenAI .NET client (2.15) over Kestrel on loopback, on the qwen2 fixture.</summary>
[Trait(Category.Name, Category.Slow)]
public sealed class OpenAiApiTests(ITestOutputHelper output)
{
    private static Task<int> FinishedRunAsync(WebAppHost app) => FinishedRuns.CreateAsync(app, store =>
        store.CreateAsync(new TrainingSettings { Source = ModelSource.Local, Model = TestFiles.Fixture("models/qwen2") }, RunStoreTests.Rows, "faq.xlsx", null));

    private static OpenAIClientOptions Options(WebAppHost app) => new() { Endpoint = new Uri(app.BaseAddress, "/v1") };

    [Fact]
    public async Task The_openai_client_lists_models_and_chats_with_a_run_streaming_and_not()
    {
        using var app = new WebAppHost();
        int runId = await FinishedRunAsync(app);
        string modelId = OpenAiModels.RunModelId(runId);
        var key = new ApiKeyCredential("not-needed-on-localhost");

        var models = (await new OpenAIModelClient(key, Options(app)).GetModelsAsync()).Value.Select(m => m.Id).ToList();
        output.WriteLine($"GET /v1/models → {string.Join(", ", models)}");
        Assert.Equal([modelId, TestFiles.Fixture("models/qwen2")], models);

        var chat = new ChatClient(modelId, key, Options(app));
        var greedy = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 24 };
        ChatMessage[] messages = [new SystemChatMessage("你是助理。"), new UserChatMessage("什麼是 LoRA？")];
        var completion = (await chat.CompleteChatAsync(messages, greedy)).Value;
        string whole = completion.Content[0].Text;
        output.WriteLine($"POST /v1/chat/completions (temperature 0, max_tokens 24) → role {completion.Role}, finish {completion.FinishReason}, usage {completion.Usage.InputTokenCount}+{completion.Usage.OutputTokenCount}={completion.Usage.TotalTokenCount}: {whole}");
        Assert.Equal(ChatMessageRole.Assistant, completion.Role);
        Assert.NotEmpty(whole);
        // The random fixture model writes no end token within 24 tokens: max_tokens ends the answer.
        Assert.Equal(ChatFinishReason.Length, completion.FinishReason);
        int promptTokens = RunTemplate().EncodePrompt([Turn.System("你是助理。"), Turn.User("什麼是 LoRA？")]).Count;
        Assert.Equal((promptTokens, 24, promptTokens + 24), (completion.Usage.InputTokenCount, completion.Usage.OutputTokenCount, completion.Usage.TotalTokenCount));

        // Streaming: the same text, the finish reason on the last choice, and the usage chunk the client asks for (stream_options.include_usage).
        var pieces = new List<string>();
        var finishes = new List<ChatFinishReason>();
        ChatTokenUsage? streamedUsage = null;
        await foreach (var update in chat.CompleteChatStreamingAsync(messages, greedy))
        {
            pieces.AddRange(update.ContentUpdate.Select(p => p.Text));
            if (update.FinishReason is { } finish) finishes.Add(finish);
            streamedUsage ??= update.Usage;
        }
        output.WriteLine($"stream: {pieces.Count} chunks, finish {string.Join(",", finishes)}, usage {streamedUsage?.InputTokenCount}+{streamedUsage?.OutputTokenCount}: {string.Join(" | ", pieces)}");
        Assert.True(pieces.Count > 1, "the answer streams in several chunks");
        Assert.Equal(whole, string.Concat(pieces)); // greedy: the same text both ways
        Assert.Equal([ChatFinishReason.Length], finishes);
        Assert.NotNull(streamedUsage);
        Assert.Equal((promptTokens, 24, promptTokens + 24), (streamedUsage.InputTokenCount, streamedUsage.OutputTokenCount, streamedUsage.TotalTokenCount));

        // stop: the text ends before the stop sequence, which is not returned (a sequence from the middle of the greedy answer).
        string stop = whole.Substring(whole.Length / 2, Math.Min(2, whole.Length - whole.Length / 2));
        var stopped = (await chat.CompleteChatAsync(messages, new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 24, StopSequences = { stop } })).Value;
        output.WriteLine($"stop \"{stop}\" → {stopped.Content[0].Text}");
        Assert.Equal(whole[..whole.IndexOf(stop, StringComparison.Ordinal)], stopped.Content[0].Text);
        Assert.Equal(ChatFinishReason.Stop, stopped.FinishReason);
        Assert.InRange(stopped.Usage.OutputTokenCount, 1, 24);

        // Sampling settings reach the generator (a seedless sample may differ; it must still answer).
        var sampled = (await chat.CompleteChatAsync(messages, new ChatCompletionOptions { Temperature = 1.2f, TopP = 0.5f, MaxOutputTokenCount = 8 })).Value;
        Assert.Single(sampled.Content);

        var unknown = await Assert.ThrowsAsync<ClientResultException>(() => new ChatClient("no-such-model", key, Options(app)).CompleteChatAsync(messages));
        Assert.Equal(404, unknown.Status);
    }

    /// <summary>The run's prompt layout over the fixture's tokenizer, as the generator renders it.</summary>
    private static PromptTemplate RunTemplate() =>
        PromptTemplate.Create(new TrainingSettings().ToPromptTemplate(), TokenizerLoader.Load(TestFiles.Fixture("models/qwen2")));

    [Fact]
    public async Task A_multi_turn_conversation_reaches_the_model_whole()
    {
        using var app = new WebAppHost();
        var chat = new ChatClient(OpenAiModels.RunModelId(await FinishedRunAsync(app)), new ApiKeyCredential("x"), Options(app));
        var greedy = new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 3 };

        var completion = (await chat.CompleteChatAsync(
            [new SystemChatMessage("你是客服。"), new UserChatMessage("可以退貨嗎？"), new AssistantChatMessage("購買後7天內可申請退貨。"), new UserChatMessage("運費誰付？")], greedy)).Value;

        // The prompt the model read is the whole conversation in the run's layout: its token count is that rendering's.
        var template = RunTemplate();
        Turn[] conversation = [Turn.System("你是客服。"), Turn.User("可以退貨嗎？"), Turn.Assistant("購買後7天內可申請退貨。"), Turn.User("運費誰付？")];
        output.WriteLine($"{completion.Usage.InputTokenCount} prompt tokens for:\n{template.FormatPrompt(conversation)}");
        Assert.Equal(template.EncodePrompt(conversation).Count, completion.Usage.InputTokenCount);
        Assert.True(completion.Usage.InputTokenCount > template.EncodePrompt([Turn.System("你是客服。"), Turn.User("運費誰付？")]).Count + 10);
        Assert.Equal(3, completion.Usage.OutputTokenCount);

        var unanswerable = await Assert.ThrowsAsync<ClientResultException>(() => chat.CompleteChatAsync([new UserChatMessage("q"), new AssistantChatMessage("a")], greedy));
        Assert.Equal(400, unanswerable.Status);
        Assert.Contains("must end with a user message", unanswerable.Message);
    }

    [Fact]
    public async Task A_stream_carries_usage_only_when_asked_for()
    {
        using var app = new WebAppHost();
        string model = OpenAiModels.RunModelId(await FinishedRunAsync(app));

        async Task<List<string>> StreamAsync(string options)
        {
            using var content = new StringContent($$"""{"model": "{{model}}", "stream": true, "temperature": 0, "max_tokens": 2, {{options}} "messages": [{"role": "user", "content": "hi"}]}""",
                System.Text.Encoding.UTF8, "application/json");
            using var response = await app.Client.PostAsync("/v1/chat/completions", content);
            response.EnsureSuccessStatusCode();
            return (await response.Content.ReadAsStringAsync()).Split("\n\n", StringSplitOptions.RemoveEmptyEntries).ToList();
        }

        var plain = await StreamAsync("");
        Assert.Equal("data: [DONE]", plain[^1]);
        Assert.DoesNotContain(plain, e => e.Contains("usage", StringComparison.Ordinal));
        Assert.Contains("\"finish_reason\":\"length\"", plain[^2]);

        var withUsage = await StreamAsync("\"stream_options\": {\"include_usage\": true},");
        using var last = System.Text.Json.JsonDocument.Parse(withUsage[^2]["data: ".Length..]);
        Assert.Equal(0, last.RootElement.GetProperty("choices").GetArrayLength());
        var usage = last.RootElement.GetProperty("usage");
        Assert.Equal(2, usage.GetProperty("completion_tokens").GetInt32());
        Assert.Equal(usage.GetProperty("prompt_tokens").GetInt32() + 2, usage.GetProperty("total_tokens").GetInt32());
        Assert.All(withUsage.SkipLast(2), e => Assert.Contains("\"usage\":null", e));
    }

    [Fact]
    public async Task A_request_waits_while_a_run_trains_on_the_device()
    {
        var runner = new ScriptedTrainingRunner();
        using var app = new WebAppHost(services => services.AddSingleton<ITrainingRunner>(runner));
        int finished = await FinishedRunAsync(app);
        var store = app.Services.GetRequiredService<RunStore>();
        var training = await store.CreateAsync(new TrainingSettings { Source = ModelSource.Local, Model = TestFiles.Fixture("models/qwen2") }, RunStoreTests.Rows, "faq.xlsx", null);
        await app.Services.GetRequiredService<RunQueue>().EnqueueAsync(training.Id);
        await runner.Script(training.Id).Started.Task.WaitAsync(TimeSpan.FromSeconds(30));

        var chat = new ChatClient(OpenAiModels.RunModelId(finished), new ApiKeyCredential("x"), Options(app));
        var answer = chat.CompleteChatAsync([new UserChatMessage("什麼是 LoRA？")], new ChatCompletionOptions { Temperature = 0, MaxOutputTokenCount = 4 });
        await Task.Delay(TimeSpan.FromSeconds(1.5));
        Assert.False(answer.IsCompleted, "the answer came while a run was training");

        runner.Script(training.Id).Finish(1.0);
        var completion = (await answer.WaitAsync(TimeSpan.FromSeconds(60))).Value;
        Assert.NotEmpty(completion.Content[0].Text);
    }

    [Fact]
    public async Task When_exposed_the_api_takes_the_access_token_as_bearer()
    {
        using var app = new WebAppHost(settings: new Dictionary<string, string?> { ["FineTune:AccessToken"] = "open-sesame-42" }, urls: "http://0.0.0.0:0");
        await FinishedRunAsync(app);

        var wrong = await Assert.ThrowsAsync<ClientResultException>(() => new OpenAIModelClient(new ApiKeyCredential("guess"), Options(app)).GetModelsAsync());
        Assert.Equal(401, wrong.Status);
        var models = (await new OpenAIModelClient(new ApiKeyCredential("open-sesame-42"), Options(app)).GetModelsAsync()).Value;
        Assert.Equal(2, models.Count);
    }
}
