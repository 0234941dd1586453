using System.Text.Json;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;

namespace FineTune.Tests.Tokenization;

/// <summary>Chat renders and ids against HF apply_chat_template on the fixture models (exact equality).</summary>
[Trait(Category.Name, Category.Parity)]
public class ChatTemplateParityTests
{
    public static TheoryData<string> Models => TokenizerParityTests.Models;

    [Theory]
    [MemberData(nameof(Models))]
    public void Renders_and_encodes_like_apply_chat_template(string model)
    {
        var tokenizer = TokenizerLoader.Load(TestFiles.Fixture($"models/{model}"));
        try
        {
            var template = ChatTemplate.ForTokenizer(tokenizer);
            Assert.NotNull(template);
            foreach (var chat in TokenizerParityTests.Golden(model).GetProperty("chat").EnumerateArray())
            {
                var messages = chat.GetProperty("messages").EnumerateArray()
                    .Select(m => new ChatMessage(m.GetProperty("role").GetString()!, m.GetProperty("content").GetString()!)).ToList();
                bool generation = chat.GetProperty("add_generation_prompt").GetBoolean();

                Assert.Equal(chat.GetProperty("text").GetString(), template.Render(messages, generation));
                Assert.Equal(TokenizerParityTests.Ints(chat.GetProperty("ids")), template.Encode(messages, generation));
            }
        }
        finally { (tokenizer as IDisposable)?.Dispose(); }
    }

    [Theory]
    [InlineData("qwen2", ChatFormat.ChatMl, "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.")]
    [InlineData("qwen2-v5", ChatFormat.ChatMl, "You are a helpful assistant.")]
    [InlineData("qwen3", ChatFormat.ChatMl, null)]
    [InlineData("qwen-v1", ChatFormat.ChatMl, "You are a helpful assistant.")]
    [InlineData("llama3", ChatFormat.Llama3, null)]
    [InlineData("mistral", ChatFormat.Mistral, null)]
    public void Detects_format_and_default_system_prompt(string model, ChatFormat format, string? defaultSystem)
    {
        var tokenizer = TokenizerLoader.Load(TestFiles.Fixture($"models/{model}"));
        var template = ChatTemplate.ForTokenizer(tokenizer)!;
        Assert.Equal(format, template.Format);
        Assert.Equal(defaultSystem, template.DefaultSystemPrompt);
        (tokenizer as IDisposable)?.Dispose();
    }
}
