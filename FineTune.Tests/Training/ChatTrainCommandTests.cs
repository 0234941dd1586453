using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Generation;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Adapters;
using FineTune.Tests.Support;
using FineTune.Web.Headless;

namespace FineTune.Tests.Training;

/// <summary>A ShareGPT chat file through the `train` command: the importer, the job, assistant-only labels, the trainer.</summary>
public sealed class ChatTrainCommandTests
{
    public ChatTrainCommandTests() => _ = ComputeBackend.Current;

    private static readonly (string Question, string Answer, string FollowUp, string Reply)[] Chats =
    [
        ("可以退貨嗎？", "購買後7天內可申請退貨。", "運費誰付？", "退貨運費由我們負擔。"),
        ("運送需要多久？", "一般3-5個工作天。", "可以指定時間嗎？", "可以在結帳時選擇時段。"),
        ("有實體店嗎？", "台北和台中各有一家。", "營業到幾點？", "每天營業到晚上九點。"),
    ];

    /// <summary>
    /// Multi-turn learning: after training, the model given a conversation's history (first exchange, then the follow-up
    /// question) answers with that conversation's second reply word for word, which depends on the history to pick.
    /// </summary>
    [Fact]
    [Trait(Category.Name, Category.Slow)]
    public void A_sharegpt_file_trains_and_the_model_answers_follow_ups_from_the_history()
    {
        string folder = TestPaths.NewTempFolder("train-chat");
        try
        {
            string data = Path.Combine(folder, "chats.jsonl");
            File.WriteAllLines(data, Chats.Select(c => System.Text.Json.JsonSerializer.Serialize(new
            {
                conversations = new[]
                {
                    new { from = "human", value = c.Question }, new { from = "gpt", value = c.Answer },
                    new { from = "human", value = c.FollowUp }, new { from = "gpt", value = c.Reply },
                },
            })).Append("""{"conversations": [{"from": "human", "value": "no answer"}]}"""));
            string zip = Path.Combine(folder, "chat.zip");
            string model = TestPaths.InRepo("FineTune.Tests", "Fixtures", "models", "qwen2");
            using var output = new StringWriter();
            using var error = new StringWriter();
            int code = TrainCommand.Run(["train", "--model", model, "--data", data, "--output", zip,
                "--epochs", "80", "--lr", "3e-3", "--rank", "32", "--alpha", "32", "--dropout", "0", "--batch", "1", "--accum", "1",
                "--schedule", "constant", "--targets", "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head", "--logging-steps", "60"], output, error);
            Assert.True(code == 0, error.ToString());
            Assert.Contains("data: 3 conversations (ShareGpt) from chats.jsonl", output.ToString());
            Assert.Contains("left out: 1 conversations (row 4: LastTurnNotAssistant)", output.ToString());

            var tokenizer = TokenizerLoader.Load(model);
            using var lm = ModelLoader.Load(model);
            PeftAdapter.Load(TrainCommand.AdapterFolder(zip), lm.NamedLinears());
            var generator = new Generator(lm);
            var template = PromptTemplate.Create(new PromptTemplateSettings(PromptStyle.ModelChatTemplate), tokenizer);
            foreach (var chat in Chats)
            {
                var ids = template.EncodePrompt([ChatMessage.User(chat.Question), ChatMessage.Assistant(chat.Answer), ChatMessage.User(chat.FollowUp)]);
                int budget = tokenizer.Encode(chat.Reply, addSpecialTokens: false).Count + 8;
                var produced = generator.Generate(ids, GenerationSettings.Greedy(budget, tokenizer.EosTokenIds)).ToList();
                Assert.Equal(chat.Reply, tokenizer.Decode(produced, skipSpecialTokens: true));
            }
        }
        finally
        {
            Directory.Delete(folder, recursive: true);
        }
    }
}
