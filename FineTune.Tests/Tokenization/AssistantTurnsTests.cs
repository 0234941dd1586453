using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Export;
using FineTune.Tests.Web.Support;

namespace FineTune.Tests.Tokenization;

/// <summary>Assistant-only labels for conversations where no generation-marked golden applies (see <see cref="AssistantTurns"/>).</summary>
public sealed class AssistantTurnsTests
{
    private static readonly ChatMessage[] TwoTurns =
    [
        ChatMessage.System("你是客服助理。"),
        ChatMessage.User("請問營業時間？"),
        ChatMessage.Assistant("每天九點到六點。"),
        ChatMessage.User("Weekends too?"),
        ChatMessage.Assistant("Yes, every day."),
    ];

    /// <summary>The decoded runs of labelled tokens, in order.</summary>
    private static List<string> LabelledRuns(ITextTokenizer tokenizer, EncodedExample example)
    {
        var runs = new List<string>();
        var run = new List<int>();
        for (int t = 0; t <= example.Labels.Length; t++)
        {
            if (t < example.Labels.Length && example.Labels[t] != EncodedExample.IgnoreIndex)
            {
                Assert.Equal(example.InputIds[t], example.Labels[t]);
                run.Add(example.Labels[t]);
            }
            else if (run.Count > 0)
            {
                runs.Add(tokenizer.Decode(run));
                run.Clear();
            }
        }
        return runs;
    }

    private static PromptTemplate Chat(ITextTokenizer tokenizer, string? system = null) =>
        PromptTemplate.Create(new PromptTemplateSettings(PromptStyle.ModelChatTemplate, SystemPrompt: system), tokenizer);

    /// <summary>
    /// Qwen3's own template writes an empty thinking block into the last assistant turn only, so rendering a conversation
    /// is not prefix-preserving: each assistant turn becomes an example of its own, rendered as at inference.
    /// </summary>
    [NpmTokenizerFact]
    public void Real_qwen3_template_gives_one_example_per_assistant_turn_with_the_loss_on_that_turn()
    {
        using var tokenizer = (TokenizerJson)TokenizerLoader.Load(Qwen3TokenizerGgufTests.Models!);
        var prompt = Chat(tokenizer);
        Assert.False(prompt.Chat!.HasGenerationMarkers);

        var examples = prompt.EncodeConversation(TwoTurns);

        Assert.Equal(2, examples.Count);
        Assert.Equal(tokenizer.Encode(prompt.Chat.Render(TwoTurns[..3], false), false), examples[0].InputIds);
        Assert.Equal(tokenizer.Encode(prompt.Chat.Render(TwoTurns, false), false), examples[1].InputIds);
        Assert.Equal(["<think>\n\n</think>\n\n每天九點到六點。<|im_end|>\n"], LabelledRuns(tokenizer, examples[0]));
        // The first answer is context in the second example: rendered without its thinking block, and not learned again.
        Assert.Equal(["<think>\n\n</think>\n\nYes, every day.<|im_end|>\n"], LabelledRuns(tokenizer, examples[1]));
    }

    [Theory]
    [InlineData("qwen2", "{0}<|im_end|>\n")]
    [InlineData("qwen2-v5", "{0}<|im_end|>\n")]
    [InlineData("qwen3", "{0}<|im_end|>\n")]
    [InlineData("qwen-v1", "{0}<|im_end|>\n")]
    [InlineData("llama3", "{0}<|eot_id|>")]
    [InlineData("mistral", "{0}</s>")]
    public void Prefix_preserving_templates_give_one_example_with_the_loss_on_every_assistant_turn(string model, string turn)
    {
        var tokenizer = TokenizerLoader.Load(TestFiles.Fixture($"models/{model}"));
        try
        {
            var example = Assert.Single(Chat(tokenizer).EncodeConversation(TwoTurns));
            Assert.Equal([string.Format(turn, "每天九點到六點。"), string.Format(turn, "Yes, every day.")], LabelledRuns(tokenizer, example));
        }
        finally { (tokenizer as IDisposable)?.Dispose(); }
    }

    [Fact]
    public void The_settings_system_prompt_is_used_when_the_conversation_has_none()
    {
        using var tokenizer = (TokenizerJson)TokenizerLoader.Load(TestFiles.Fixture("models/qwen3"));
        var prompt = Chat(tokenizer, system: "Be brief.");
        var example = Assert.Single(prompt.EncodeConversation(TwoTurns[1..]));
        Assert.StartsWith("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n", tokenizer.Decode(example.InputIds));
        // A conversation's own system message wins.
        Assert.StartsWith("<|im_start|>system\n你是客服助理。<|im_end|>", tokenizer.Decode(Assert.Single(prompt.EncodeConversation(TwoTurns)).InputIds));
    }

    /// <summary>The fixture Qwen tokenizers normalize to NFC: tokens then spell the normalized text, and the spans are mapped onto it.</summary>
    [Fact]
    public void Decomposed_unicode_is_aligned_through_the_nfc_normalizer()
    {
        using var tokenizer = (TokenizerJson)TokenizerLoader.Load(TestFiles.Fixture("models/qwen2"));
        ChatMessage[] chat = [ChatMessage.User("Cafe\u0301?"), ChatMessage.Assistant("Cafe\u0301 au lait.")];
        var example = Assert.Single(Chat(tokenizer).EncodeConversation(chat));
        Assert.Equal(["Caf\u00e9 au lait.<|im_end|>\n"], LabelledRuns(tokenizer, example));
    }

    [Fact]
    public void A_conversation_without_an_assistant_turn_is_refused_with_a_reason()
    {
        using var tokenizer = (TokenizerJson)TokenizerLoader.Load(TestFiles.Fixture("models/qwen2"));
        var none = Assert.Throws<PromptTemplateException>(() => Chat(tokenizer).EncodeConversation([ChatMessage.User("hi")]));
        Assert.Contains("no assistant turn", none.Message);
    }

    /// <summary>
    /// The tutorial and custom layouts hold one exchange: a conversation trains as its exchanges' examples one after
    /// another (BOS, prompt, answer, EOS each), the text the multi-turn prompt gives the same history at inference.
    /// </summary>
    [Theory]
    [InlineData(PromptStyle.Tutorial, null)]
    [InlineData(PromptStyle.Custom, "<{system}> Q: {instruction}\nA: {output}")]
    public void One_exchange_layouts_train_a_conversation_as_its_exchanges_in_a_row(PromptStyle style, string? custom)
    {
        using var tokenizer = (TokenizerJson)TokenizerLoader.Load(TestFiles.Fixture("models/llama3"));
        var template = PromptTemplate.Create(new PromptTemplateSettings(style, custom), tokenizer);

        var example = Assert.Single(template.EncodeConversation(TwoTurns));

        var first = template.Encode(new QaRow("請問營業時間？", "每天九點到六點。", System: "你是客服助理。"));
        var second = template.Encode(new QaRow("Weekends too?", "Yes, every day.", System: "你是客服助理。"));
        Assert.Equal([.. first.InputIds, .. second.InputIds], example.InputIds);
        Assert.Equal([.. first.Labels, .. second.Labels], example.Labels);
        // What inference gives for the history and the next question starts with this example's ids.
        var prompt = template.EncodePrompt([.. TwoTurns, ChatMessage.User("And holidays?")]);
        Assert.Equal(example.InputIds, prompt.Take(example.InputIds.Length));
        Assert.Equal(2, LabelledRuns(tokenizer, example).Count);
    }

    /// <summary>Cutting at max_seq_length cuts ids and labels together; a conversation cut before its first answer is dropped and named.</summary>
    [Fact]
    public void Truncation_keeps_labels_aligned_with_ids()
    {
        using var tokenizer = (TokenizerJson)TokenizerLoader.Load(TestFiles.Fixture("models/qwen2"));
        var prompt = Chat(tokenizer);
        var full = Assert.Single(prompt.EncodeConversation(TwoTurns));
        int firstAnswer = full.PromptLength;
        int secondAnswer = Array.FindIndex(full.Labels, firstAnswer + 1, l => l == EncodedExample.IgnoreIndex) is var gap and >= 0
            ? Array.FindIndex(full.Labels, gap, l => l != EncodedExample.IgnoreIndex) : -1;
        Assert.True(secondAnswer > firstAnswer, "two labelled runs");
        int max = secondAnswer + 2; // cut inside the second answer

        var set = TrainingExamples.Build([new Conversation(TwoTurns, SourceRow: 7), new Conversation(TwoTurns, SourceRow: 9)],
            prompt, new ExampleOptions(max));
        Assert.Equal(2, set.TruncatedCount);
        var example = set.Examples[0];
        Assert.Equal(full.InputIds[..max], example.InputIds);
        Assert.Equal(7, example.SourceRow);
        for (int t = 0; t < max - 1; t++) Assert.Equal(full.Labels[t + 1], example.Targets[t]);
        Assert.Equal(EncodedExample.IgnoreIndex, example.Targets[max - 1]);

        var dropped = TrainingExamples.Build([new Conversation(TwoTurns, SourceRow: 4)], prompt, new ExampleOptions(firstAnswer));
        Assert.Empty(dropped.Examples);
        Assert.Equal([4], dropped.DroppedSourceRows);
    }
}
