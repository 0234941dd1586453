using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Web.Support;

namespace FineTune.Tests.Tokenization;

/// <summary>Multi-turn prompts: the chat template renders the history natively; the tutorial and custom layouts write earlier exchanges as their training examples.</summary>
public class PromptTemplateConversationTests
{
    private static readonly ChatMessage[] TwoTurns =
    [
        ChatMessage.User("可以退貨嗎？"), ChatMessage.Assistant("購買後7天內可申請退貨。"), ChatMessage.User("運費誰付？"),
    ];

    private static ITextTokenizer Load(string model) => TokenizerLoader.Load(TestFiles.Fixture($"models/{model}"));

    public static TheoryData<string, PromptStyle, string?, string?> SingleTurnCases()
    {
        var data = new TheoryData<string, PromptStyle, string?, string?>();
        foreach (string model in new[] { "qwen2", "qwen3", "llama3", "mistral", "qwen-v1" })
            foreach (string? system in new[] { null, "你是客服。" })
            {
                data.Add(model, PromptStyle.ModelChatTemplate, null, system);
                data.Add(model, PromptStyle.Tutorial, null, system);
                data.Add(model, PromptStyle.Custom, "<{system}> Q: {instruction}\nA: {output}", system);
            }
        data.Add("qwen2", PromptStyle.ModelChatTemplate, "setting-system", null);
        return data;
    }

    [Theory]
    [MemberData(nameof(SingleTurnCases))]
    public void One_question_gives_the_single_turn_prompt_byte_for_byte(string model, PromptStyle style, string? customOrSetting, string? system)
    {
        var settings = style == PromptStyle.Custom ? new PromptTemplateSettings(style, customOrSetting) : new PromptTemplateSettings(style, SystemPrompt: customOrSetting);
        var template = PromptTemplate.Create(settings, Load(model));
        var row = new QaRow("可以退貨嗎？", "", System: system);
        ChatMessage[] conversation = system is null ? [ChatMessage.User(row.Instruction)] : [ChatMessage.System(system), ChatMessage.User(row.Instruction)];

        Assert.Equal(template.FormatPrompt(row), template.FormatPrompt(conversation));
        Assert.Equal(template.EncodePrompt(row), template.EncodePrompt(conversation));
        // A blank system message is no system message (as a row's blank System).
        Assert.Equal(template.EncodePrompt(row with { System = null }), template.EncodePrompt([ChatMessage.System(" "), ChatMessage.User(row.Instruction)]));
    }

    [Fact]
    public void The_chat_template_renders_the_whole_history()
    {
        var template = PromptTemplate.Create(new PromptTemplateSettings(SystemPrompt: "你是客服。"), Load("qwen2"));

        Assert.Equal(
            "<|im_start|>system\n你是客服。<|im_end|>\n" +
            "<|im_start|>user\n可以退貨嗎？<|im_end|>\n<|im_start|>assistant\n購買後7天內可申請退貨。<|im_end|>\n" +
            "<|im_start|>user\n運費誰付？<|im_end|>\n<|im_start|>assistant\n",
            template.FormatPrompt(TwoTurns));
        Assert.StartsWith("<|im_start|>system\n店長<|im_end|>\n", template.FormatPrompt([ChatMessage.System("店長"), .. TwoTurns]));
        Assert.Equal(template.Chat!.Encode([ChatMessage.System("你是客服。"), .. TwoTurns], addGenerationPrompt: true), template.EncodePrompt(TwoTurns));
    }

    [Fact]
    public void The_tutorial_layout_writes_earlier_exchanges_as_training_examples_ended_by_eos()
    {
        var tokenizer = Load("qwen2");
        var template = PromptTemplate.Create(new PromptTemplateSettings(PromptStyle.Tutorial), tokenizer);

        Assert.Equal(
            "### 指令：\n可以退貨嗎？\n\n### 回應：\n購買後7天內可申請退貨。<|im_end|>" +
            "### 指令：\n運費誰付？\n\n### 回應：\n",
            template.FormatPrompt(TwoTurns));
        var first = template.Encode(new QaRow("可以退貨嗎？", "購買後7天內可申請退貨。"));
        Assert.Equal([.. first.InputIds, .. template.EncodePrompt(new QaRow("運費誰付？", ""))], template.EncodePrompt(TwoTurns));
        Assert.Equal(tokenizer.EosTokenId, first.InputIds[^1]);
    }

    [Fact]
    public void On_a_bos_tokenizer_every_exchange_starts_with_bos_as_its_training_example_did()
    {
        var tokenizer = Load("mistral");
        var template = PromptTemplate.Create(new PromptTemplateSettings(PromptStyle.Tutorial), tokenizer);

        var ids = template.EncodePrompt(TwoTurns);

        Assert.Equal(2, ids.Count(id => id == tokenizer.BosTokenId));
        Assert.Equal(1, ids.Count(id => id == tokenizer.EosTokenId));
        int eosAt = ids.ToList().IndexOf(tokenizer.EosTokenId!.Value);
        Assert.Equal(tokenizer.BosTokenId, ids[eosAt + 1]);
    }

    [Fact]
    public void A_custom_template_writes_the_system_text_in_every_exchange()
    {
        var template = PromptTemplate.Create(new PromptTemplateSettings(PromptStyle.Custom, "[{system}] Q: {instruction}\nA: {output}\n---"), Load("qwen2"));

        Assert.Equal("[店長] Q: 可以退貨嗎？\nA: 購買後7天內可申請退貨。\n---<|im_end|>[店長] Q: 運費誰付？\nA: ",
            template.FormatPrompt([ChatMessage.System("店長"), .. TwoTurns]));
        Assert.True(PromptTemplate.TakesSystemPrompt(template.Settings));
        Assert.False(PromptTemplate.TakesSystemPrompt(new PromptTemplateSettings(PromptStyle.Custom, "Q: {instruction}\nA: {output}")));
        Assert.False(PromptTemplate.TakesSystemPrompt(new PromptTemplateSettings(PromptStyle.Tutorial)));
        Assert.True(PromptTemplate.TakesSystemPrompt(new PromptTemplateSettings()));
    }

    [Fact]
    public void Exchanges_pair_each_question_with_its_answer_and_join_repeated_roles()
    {
        var rows = PromptTemplate.Exchanges(
        [
            ChatMessage.System("s1"), ChatMessage.User("q1"), ChatMessage.User("q1b"), ChatMessage.Assistant("a1"),
            ChatMessage.System("s2"), ChatMessage.User("q2"), ChatMessage.Assistant("a2"), ChatMessage.Assistant("a2b"), ChatMessage.User("q3"),
        ]);

        Assert.Equal([new QaRow("q1\n\nq1b", "a1", System: "s1\n\ns2"), new QaRow("q2", "a2\n\na2b", System: "s1\n\ns2"), new QaRow("q3", "", System: "s1\n\ns2")], rows);
    }

    [Theory]
    [InlineData("assistant", "last message is from 'assistant'")]
    [InlineData("none", "no user message")]
    [InlineData("tool", "'tool' message")]
    public void A_conversation_that_cannot_be_answered_says_why(string shape, string expected)
    {
        ChatMessage[] conversation = shape switch
        {
            "assistant" => [ChatMessage.User("q"), ChatMessage.Assistant("a")],
            "none" => [ChatMessage.System("s")],
            _ => [ChatMessage.User("q"), new ChatMessage("tool", "42"), ChatMessage.User("q2")],
        };
        var template = PromptTemplate.Create(new PromptTemplateSettings(PromptStyle.Tutorial), Load("qwen2"));

        var e = Assert.Throws<PromptTemplateException>(() => template.EncodePrompt(conversation));
        Assert.Contains(expected, e.Message);
    }
}
