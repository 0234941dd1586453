using System.Text.Json;
using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Adapters;
using FineTune.Tests.Export;
using FineTune.Tests.Support;
using FineTune.Tests.Web.Support;

namespace FineTune.Tests.Tokenization;

/// <summary>
/// Assistant-only loss against transformers 5.17: Tokenization/Data/chat_masks_golden.json holds
/// apply_chat_template(conversation, chat_template=T, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
/// (made by tools/tokenization/chat_masks_golden.py on the GPU machine) for the fixture tokenizers with the
/// generation-marked training variants of their templates (Data/chat-training/*.jinja), and for npm's real Qwen3
/// tokenizer with its own template given {% generation %} around the assistant branch. Ids and masks must be equal,
/// element for element; cases with max_length are transformers' truncation, which must equal our mask cut at that length.
/// </summary>
[Trait(Category.Name, Category.Parity)]
public sealed class AssistantMaskParityTests
{
    private const string RealQwen3 = "qwen3-real";

    private static readonly JsonElement Golden = JsonDocument.Parse(File.ReadAllText(
        TestPaths.InRepo("FineTune.Tests", "Tokenization", "Data", "chat_masks_golden.json"))).RootElement;

    public static TheoryData<string> FixtureModels => new() { "qwen2", "qwen2-v5", "qwen3", "llama3", "mistral" };

    [Theory]
    [MemberData(nameof(FixtureModels))]
    public void Generation_marked_templates_give_transformers_ids_and_assistant_masks(string model)
    {
        using var tokenizer = (TokenizerJson)TokenizerLoader.Load(TestFiles.Fixture($"models/{model}"));
        var template = new ChatTemplate(File.ReadAllText(TrainingTemplatePath(model)), tokenizer);
        Assert.True(template.HasGenerationMarkers);
        AssertCases(model, template);
    }

    [NpmTokenizerFact]
    public void Real_qwen3_template_with_generation_markers_gives_transformers_ids_and_assistant_masks()
    {
        using var tokenizer = (TokenizerJson)TokenizerLoader.Load(Qwen3TokenizerGgufTests.Models!);
        var template = new ChatTemplate(RealQwen3Training(tokenizer.ChatTemplate!), tokenizer);
        AssertCases(RealQwen3, template);
    }

    /// <summary>
    /// The fixtures' own templates have no markers: the spans derived from them (<see cref="AssistantTurns"/>) must be
    /// the spans the marked variants give, so the labels equal transformers' masked ids: one example per conversation.
    /// </summary>
    [Theory]
    [MemberData(nameof(FixtureModels))]
    public void Spans_derived_from_templates_without_markers_equal_transformers_masks(string model)
    {
        using var tokenizer = (TokenizerJson)TokenizerLoader.Load(TestFiles.Fixture($"models/{model}"));
        var prompt = PromptTemplate.Create(new PromptTemplateSettings(PromptStyle.ModelChatTemplate), tokenizer);
        Assert.False(prompt.Chat!.HasGenerationMarkers);
        int compared = 0;
        foreach (var golden in Cases(model).Where(c => c.GetProperty("max_length").ValueKind == JsonValueKind.Null))
        {
            var messages = Conversation(golden.GetProperty("conversation").GetInt32());
            Assert.Equal(golden.GetProperty("text").GetString(), prompt.Chat.Render(messages, addGenerationPrompt: false));
            var example = Assert.Single(prompt.EncodeConversation(messages));
            int[] ids = Ints(golden.GetProperty("input_ids"));
            int[] mask = Ints(golden.GetProperty("assistant_masks"));
            Assert.Equal(ids, example.InputIds);
            Assert.Equal(ids.Select((id, t) => mask[t] == 1 ? id : EncodedExample.IgnoreIndex).ToArray(), example.Labels);
            compared++;
        }
        Assert.Equal(5, compared);
    }

    private static void AssertCases(string model, ChatTemplate template)
    {
        int compared = 0, truncated = 0;
        foreach (var golden in Cases(model))
        {
            var messages = Conversation(golden.GetProperty("conversation").GetInt32());
            int[] ids = Ints(golden.GetProperty("input_ids"));
            int[] mask = Ints(golden.GetProperty("assistant_masks"));
            Assert.Equal(golden.GetProperty("text").GetString(), template.Render(messages, addGenerationPrompt: false));

            var ours = template.EncodeWithAssistantMask(messages);
            if (golden.GetProperty("max_length").ValueKind == JsonValueKind.Number)
            {
                int max = golden.GetProperty("max_length").GetInt32();
                Assert.True(ours.InputIds.Length > max, "a truncation case must be longer than its max_length");
                ours = new ChatEncoding(ours.InputIds[..max], ours.AssistantMask[..max]);
                truncated++;
            }
            else Assert.Contains(1, mask);
            Assert.Equal(ids, ours.InputIds);
            Assert.Equal(mask, ours.AssistantMask);
            compared++;
        }
        Assert.True(compared >= 5, $"{model}: {compared} golden cases");
        if (model is "qwen2" or "llama3" or RealQwen3) Assert.True(truncated > 0);
    }

    /// <summary>The same patch as tools/tokenization/chat_masks_golden.py makes: the assistant branch inside {% generation %}.</summary>
    internal static string RealQwen3Training(string template)
    {
        const string start = "{%- elif message.role == \"assistant\" %}";
        const string end = "{%- elif message.role == \"tool\" %}";
        Assert.Single(template.Split(start)[1..]);
        Assert.Single(template.Split(end)[1..]);
        return template.Replace(start, start + "\n        {%- generation %}").Replace(end, "{%- endgeneration %}\n    " + end);
    }

    internal static string TrainingTemplatePath(string model) =>
        TestPaths.InRepo("FineTune.Tests", "Tokenization", "Data", "chat-training", model + ".jinja");

    internal static IReadOnlyList<ChatMessage> Conversation(int index) =>
        Golden.GetProperty("conversations")[index].GetProperty("messages").EnumerateArray()
            .Select(m => new ChatMessage(m.GetProperty("role").GetString()!, m.GetProperty("content").GetString()!)).ToList();

    private static IEnumerable<JsonElement> Cases(string model) =>
        Golden.GetProperty("cases").EnumerateArray().Where(c => c.GetProperty("model").GetString() == model);

    private static int[] Ints(JsonElement array) => array.EnumerateArray().Select(e => e.GetInt32()).ToArray();
}
