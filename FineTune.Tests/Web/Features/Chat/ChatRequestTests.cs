using FineTune.Engine.Tokenization;
using FineTune.Web.Features.Chat;
using FineTune.Web.Features.Settings;

namespace FineTune.Tests.Web.Features.Chat;

/// <summary>The one mapping from a run's settings to a chat request (test step, batch test, learning check, OpenAI-compatible API).</summary>
public class ChatRequestTests
{
    private static readonly IReadOnlyList<ChatMessage> Question = ChatRequest.Question("可以退貨嗎？", system: "你是客服。");

    [Fact]
    public void A_qlora_run_is_asked_as_it_was_trained()
    {
        var run = new TrainingSettings
        {
            Source = ModelSource.Hub, Model = "Qwen/Qwen2.5-0.5B-Instruct", Quantization = Quantization.Nf4, DoubleQuantization = false,
            PromptTemplate = PromptStyle.Custom, CustomTemplate = "問：{instruction}\n答：{output}",
        };

        var request = ChatRequest.ForRun(run, "/runs/7/adapter", Question, maxNewTokens: 64, temperature: 0, topP: 1);

        Assert.Equal(new ChatRequest("Qwen/Qwen2.5-0.5B-Instruct", ModelSource.Hub, "/runs/7/adapter", Question, 64, 0, 1,
            FourBit: true, DoubleQuantization: false, Template: new PromptTemplateSettings(PromptStyle.Custom, "問：{instruction}\n答：{output}")), request);
    }

    [Fact]
    public void A_16_bit_run_without_an_adapter_is_its_base_model_with_the_default_sampling()
    {
        var run = new TrainingSettings
        {
            Source = ModelSource.Local, Model = "/models/qwen2", Quantization = Quantization.None, PromptTemplate = PromptStyle.ModelChatTemplate,
            CustomTemplate = "ignored unless the style is custom",
        };

        var request = ChatRequest.ForRun(run, adapterDirectory: null, Question);

        Assert.Null(request.AdapterDirectory);
        Assert.False(request.FourBit);
        Assert.Equal(new PromptTemplateSettings(PromptStyle.ModelChatTemplate, null), request.PromptTemplate);
        Assert.Equal((ChatRequest.DefaultMaxNewTokens, ChatRequest.DefaultTemperature, ChatRequest.DefaultTopP), (request.MaxNewTokens, request.Temperature, request.TopP));
        Assert.Equal((256, 0.7, 0.9), (request.MaxNewTokens, request.Temperature, request.TopP));
    }
}
