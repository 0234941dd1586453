using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Web.Support;

namespace FineTune.Tests.Tokenization;

public class PromptTemplateTests
{
    private static readonly QaRow Row = new("可以退貨嗎？", "購買後7天內可申請退貨。");

    private static ITextTokenizer Load(string model) => TokenizerLoader.Load(TestFiles.Fixture($"models/{model}"));

    [Fact]
    public void Qwen25_chat_template_adds_its_default_system_prompt_and_puts_the_end_token_in_the_answer()
    {
        var tokenizer = Load("qwen2");
        var template = PromptTemplate.Create(new PromptTemplateSettings(), tokenizer);

        var pair = template.Format(Row);

        Assert.Equal("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n" +
                     "<|im_start|>user\n可以退貨嗎？<|im_end|>\n<|im_start|>assistant\n", pair.Prompt);
        Assert.Equal("購買後7天內可申請退貨。<|im_end|>\n", pair.Answer);
        Assert.Equal(pair.Prompt, template.FormatPrompt(Row));
    }

    [Fact]
    public void Row_system_and_setting_system_replace_the_default()
    {
        var tokenizer = Load("qwen2");
        var template = PromptTemplate.Create(new PromptTemplateSettings(SystemPrompt: "你是客服。"), tokenizer);

        Assert.StartsWith("<|im_start|>system\n你是客服。<|im_end|>\n", template.Format(Row).Prompt);
        Assert.StartsWith("<|im_start|>system\n店長<|im_end|>\n", template.Format(Row with { System = "店長" }).Prompt);
        Assert.Contains("<|im_start|>user\n可以退貨嗎？\n\n七天前買的<|im_end|>", template.Format(Row with { Input = "七天前買的" }).Prompt);
    }

    [Theory]
    [InlineData("qwen3", "<|im_start|>user\n可以退貨嗎？<|im_end|>\n<|im_start|>assistant\n", "購買後7天內可申請退貨。<|im_end|>\n")]
    [InlineData("llama3", "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\n可以退貨嗎？<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n", "購買後7天內可申請退貨。<|eot_id|>")]
    [InlineData("mistral", "<s>[INST] 可以退貨嗎？ [/INST]", "購買後7天內可申請退貨。</s>")]
    [InlineData("qwen-v1", "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n可以退貨嗎？<|im_end|>\n<|im_start|>assistant\n", "購買後7天內可申請退貨。<|im_end|>\n")]
    public void Chat_templates_split_prompt_and_answer(string model, string prompt, string answer)
    {
        var template = PromptTemplate.Create(new PromptTemplateSettings(), Load(model));

        var pair = template.Format(Row);

        Assert.Equal(prompt, pair.Prompt);
        Assert.Equal(answer, pair.Answer);
    }

    [Fact]
    public void Encoding_masks_the_prompt_and_does_not_double_the_bos()
    {
        var tokenizer = Load("llama3");
        var template = PromptTemplate.Create(new PromptTemplateSettings(), tokenizer);

        var example = template.Encode(Row);

        Assert.Equal(tokenizer.BosTokenId, example.InputIds[0]);
        Assert.NotEqual(tokenizer.BosTokenId, example.InputIds[1]);
        int promptLength = template.EncodePrompt(Row).Count;
        Assert.Equal(promptLength, example.PromptLength);
        Assert.Equal(template.EncodePrompt(Row), example.InputIds.Take(promptLength));
        Assert.All(example.Labels.Take(promptLength), l => Assert.Equal(EncodedExample.IgnoreIndex, l));
        Assert.Equal(example.InputIds.Skip(promptLength), example.Labels.Skip(promptLength));
        Assert.Equal(904, example.InputIds[^1]); // <|eot_id|> is learned
        Assert.Equal("購買後7天內可申請退貨。<|eot_id|>", tokenizer.Decode(example.InputIds.Skip(promptLength)));
    }

    [Fact]
    public void Tutorial_format_matches_the_tutorial_text_and_ends_with_eos()
    {
        var tokenizer = Load("qwen2");
        var template = PromptTemplate.Create(new PromptTemplateSettings(PromptStyle.Tutorial), tokenizer);

        var pair = template.Format(Row);
        var example = template.Encode(Row);

        Assert.Equal("### 指令：\n可以退貨嗎？\n\n### 回應：\n購買後7天內可申請退貨。", pair.Text);
        Assert.Equal("### 指令：\n可以退貨嗎？\n\n### 回應：\n", template.FormatPrompt(Row));
        Assert.Equal(tokenizer.EosTokenId, example.InputIds[^1]);
        Assert.Equal("購買後7天內可申請退貨。<|im_end|>", tokenizer.Decode(example.InputIds.Skip(example.PromptLength)));
        Assert.Contains("### 輸入：\n七天前", template.Format(Row with { Input = "七天前" }).Prompt);
    }

    [Fact]
    public void Tutorial_format_on_a_bos_tokenizer_starts_with_bos()
    {
        var tokenizer = Load("mistral");
        var example = PromptTemplate.Create(new PromptTemplateSettings(PromptStyle.Tutorial), tokenizer).Encode(Row);

        Assert.Equal(tokenizer.BosTokenId, example.InputIds[0]);
        Assert.Equal(tokenizer.EosTokenId, example.InputIds[^1]);
    }

    [Fact]
    public void Custom_template_fills_placeholders_once_and_keeps_text_after_output_in_the_answer()
    {
        var tokenizer = Load("qwen2");
        var template = PromptTemplate.Create(new PromptTemplateSettings(PromptStyle.Custom, "Q: {instruction} ({input})\nA: {output}\n---"), tokenizer);

        var pair = template.Format(new QaRow("what is {input}?", "42", Input: "ctx"));

        Assert.Equal("Q: what is {input}? (ctx)\nA: ", pair.Prompt);
        Assert.Equal("42\n---", pair.Answer);
    }

    [Theory]
    [InlineData("Q: {instruction}", "no {output}")]
    [InlineData("{instruction} {output} {output}", "more than once")]
    [InlineData("A: {output}", "no {instruction}")]
    [InlineData("{instruction} {question} {output}", "{question}")]
    [InlineData("{output} {instruction}", "before")]
    [InlineData(" ", "empty")]
    public void Custom_template_errors_say_what_to_fix(string custom, string expected)
    {
        var e = Assert.Throws<PromptTemplateException>(() => PromptTemplate.Validate(custom));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void Model_without_chat_template_asks_for_another_style()
    {
        using var files = new TinyTokenizerFiles();
        files.WriteTokenizerJson();
        var tokenizer = TokenizerLoader.Load(files.Folder);

        var e = Assert.Throws<PromptTemplateException>(() => PromptTemplate.Create(new PromptTemplateSettings(), tokenizer));
        Assert.Contains("tutorial format", e.Message);
        (tokenizer as IDisposable)?.Dispose();
    }
}
