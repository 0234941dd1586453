using System.Text;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Web.Support;
using FineTune.Web.Features.Data;
using Microsoft.Extensions.Logging.Abstractions;

namespace FineTune.Tests.Web.Features.Data;

/// <summary>Chat datasets as people have them: OpenAI messages and ShareGPT conversations in JSON/JSONL, sheets with a conversation id.</summary>
public sealed class ChatDatasetImportTests
{
    private readonly DataImporter _importer = new(new ExcelTableReader(NullLogger<ExcelTableReader>.Instance));

    private ImportResult Import(byte[] bytes, string name)
    {
        var file = _importer.Parse(bytes, name);
        return _importer.Build(file, new ImportSettings(DataImporter.GuessSheet(file)));
    }

    private ImportResult Import(string text, string name) => Import(Encoding.UTF8.GetBytes(text), name);

    private static string[] Roles(ImportedConversation c) => c.Conversation.Messages.Select(m => m.Role).ToArray();

    [Fact]
    public void Openai_messages_in_jsonl_become_conversations_numbered_by_line()
    {
        string jsonl =
            """{"messages": [{"role": "system", "content": "你是客服。"}, {"role": "user", "content": "可以退貨嗎？"}, {"role": "assistant", "content": "七天內可以。"}, {"role": "user", "content": "運費呢？"}, {"role": "assistant", "content": "我們負擔。"}]}""" + "\n\n" +
            """{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}""" + "\n" +
            """{"messages": [{"role": "user", "content": "broken"},""" + "\n";

        var import = Import(jsonl, "chat.jsonl");

        Assert.Equal(ChatLayout.OpenAiMessages, import.Chat!.Layout);
        Assert.Empty(import.Rows);
        Assert.Equal([1, 3], import.Conversations.Select(c => c.SourceRow));
        Assert.Equal(["system", "user", "assistant", "user", "assistant"], Roles(import.Conversations[0]));
        Assert.Equal("我們負擔。", import.Conversations[0].Conversation.Messages[^1].Content);
        Assert.Equal(2, import.UsableConversations.Count);
        // The broken last line is left out and named, as for Q&A JSONL.
        Assert.Equal([4], import.Report.RowsWith(IssueKind.InvalidJsonLine));
        Assert.Equal((2, 2), (import.Report.DataRows, import.Report.UsableRows));
    }

    [Fact]
    public void Sharegpt_conversations_in_a_json_array_map_human_gpt_and_system()
    {
        string json = """
            [
              {"id": "a", "conversations": [{"from": "system", "value": "Be brief."}, {"from": "human", "value": "什麼是 LoRA？"}, {"from": "gpt", "value": "低秩適配。"}]},
              {"id": "b", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}, {"from": "human", "value": "Bye"}, {"from": "gpt", "value": "Bye!"}]}
            ]
            """;

        var import = Import(json, "sharegpt.json");

        Assert.Equal(ChatLayout.ShareGpt, import.Chat!.Layout);
        Assert.Equal([1, 2], import.Conversations.Select(c => c.SourceRow));
        Assert.Equal(["system", "user", "assistant"], Roles(import.Conversations[0]));
        Assert.Equal(["user", "assistant", "user", "assistant"], Roles(import.Conversations[1]));
        Assert.All(import.Conversations, c => Assert.True(c.IsUsable));
    }

    [Fact]
    public void A_workbook_with_conversation_id_role_and_content_columns_groups_turns_by_id_in_row_order()
    {
        byte[] xlsx = TestFiles.Workbook(workbook =>
        {
            var sheet = workbook.AddWorksheet("對話");
            string[][] rows =
            [
                ["對話編號", "角色", "內容"],
                ["c1", "使用者", "可以退貨嗎？"],
                ["c2", "user", "Hi"],
                ["c1", "助理", "七天內可以。"],
                ["c2", "assistant", "Hello!"],
                ["c1", "使用者", "運費呢？"],
                ["c1", "助理", "我們負擔。"],
            ];
            for (int r = 0; r < rows.Length; r++)
                for (int c = 0; c < rows[r].Length; c++)
                    sheet.Cell(r + 1, c + 1).Value = rows[r][c];
        });

        var import = Import(xlsx, "chats.xlsx");

        Assert.Equal(ChatLayout.ConversationIdSheet, import.Chat!.Layout);
        Assert.Equal([2, 3], import.Conversations.Select(c => c.SourceRow));
        var first = import.Conversations[0].Conversation.Messages;
        Assert.Equal([ChatMessage.User("可以退貨嗎？"), ChatMessage.Assistant("七天內可以。"), ChatMessage.User("運費呢？"), ChatMessage.Assistant("我們負擔。")], first);
        Assert.Equal(2, import.UsableConversations.Count);
    }

    /// <summary>Each problem blocks its conversation, and is reported on the row (or line) of the turn, with the turn.</summary>
    [Fact]
    public void Empty_turns_unknown_roles_and_conversations_not_ending_with_the_assistant_are_reported_on_their_rows()
    {
        string csv = """
            conversation_id,role,content
            ok,user,Hi
            ok,assistant,Hello
            empty,user,Hi
            empty,assistant,
            tool,user,What time is it?
            tool,tool,12:00
            tool,assistant,Noon.
            open,user,Hi
            open,assistant,Hello
            open,user,Are you there?
            first,assistant,I speak first
            first,user,OK
            first,assistant,Fine
            ,user,no id
            """;

        var import = Import(csv, "chats.csv");

        Assert.Equal(ChatLayout.ConversationIdSheet, import.Chat!.Layout);
        Assert.Equal(6, import.Conversations.Count);
        Assert.Equal([2], import.Conversations.Where(c => c.IsUsable).Select(c => c.SourceRow));
        var issues = import.Report.Issues;
        Assert.Contains(new ValidationIssue(IssueKind.EmptyTurn, 5, Turn: 2), issues);
        Assert.Contains(new ValidationIssue(IssueKind.UnknownRole, 7, Cell: "tool", Turn: 2), issues);
        Assert.Contains(new ValidationIssue(IssueKind.LastTurnNotAssistant, 11, Turn: 3), issues);
        Assert.Contains(new ValidationIssue(IssueKind.AssistantBeforeUser, 12, Turn: 1), issues);
        Assert.Contains(new ValidationIssue(IssueKind.NoConversationId, 15), issues);
        Assert.All(issues, i => Assert.True(i.IsBlocking));
        Assert.Equal((6, 1), (import.Report.DataRows, import.Report.UsableRows));
    }

    [Fact]
    public void A_messages_value_that_is_not_a_list_of_turns_is_reported()
    {
        var import = Import("""{"messages": "hello"}""" + "\n" + """{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}""", "chat.jsonl");
        Assert.Equal([1], import.Report.RowsWith(IssueKind.NotAConversation));
        Assert.Single(import.UsableConversations);
    }

    /// <summary>With the run's template at hand, a conversation it refuses (raise_exception) is left out with the template's reason, and one over the maximum length is flagged.</summary>
    [Fact]
    public void Conversations_the_chat_template_refuses_are_left_out_and_long_ones_flagged()
    {
        string jsonl =
            """{"messages": [{"role": "system", "content": "sys"}, {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}""" + "\n" +
            """{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello there, a long answer"}]}""" + "\n" +
            """{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]}""";
        var file = _importer.Parse(Encoding.UTF8.GetBytes(jsonl), "chat.jsonl");
        var import = _importer.Build(file, new ImportSettings(MaxSeqLength: 10)
        {
            CountConversationTokens = c => c.Messages[0].Role == "system"
                ? throw new FineTune.Engine.Tokenization.Jinja.ChatTemplateException("The chat template refused the messages: System role not supported")
                : c.Messages.Sum(m => m.Content.Length),
        });

        Assert.Contains(new ValidationIssue(IssueKind.ChatTemplateRefused, 1, Cell: "The chat template refused the messages: System role not supported"), import.Report.Issues);
        Assert.Contains(new ValidationIssue(IssueKind.TooLong, 2, Tokens: 28), import.Report.Issues);
        Assert.Equal([2, 3], import.UsableConversations.Select(c => c.SourceRow));
    }

    [Fact]
    public void A_local_model_counts_a_conversation_as_its_longest_training_example()
    {
        string folder = TestFiles.Fixture("models/qwen2");
        var settings = new FineTune.Web.Features.Settings.TrainingSettings
        {
            Source = FineTune.Web.Features.Settings.ModelSource.Local, Model = folder, PromptTemplate = PromptStyle.ModelChatTemplate,
        };
        var conversation = new FineTune.Engine.Data.Conversation([ChatMessage.User("可以退貨嗎？"), ChatMessage.Assistant("七天內可以。"), ChatMessage.User("運費呢？"), ChatMessage.Assistant("我們負擔。")]);
        var template = PromptTemplate.Create(new PromptTemplateSettings(PromptStyle.ModelChatTemplate), TokenizerLoader.Load(folder));

        int counted = new FineTune.Web.Features.Engine.TokenCounter(NullLogger<FineTune.Web.Features.Engine.TokenCounter>.Instance).ForConversations(settings)(conversation);

        Assert.Equal(Assert.Single(template.EncodeConversation(conversation.Messages)).InputIds.Length, counted);
    }

    [Fact]
    public void Question_answer_files_are_not_taken_for_chat_data()
    {
        Assert.Null(Import("問題,回答\n可以退貨嗎？,可以\n", "qa.csv").Chat);
        Assert.Null(Import("""{"instruction": "q", "output": "a"}""", "qa.jsonl").Chat);
    }

    [Fact]
    public void Excluded_conversations_are_left_out_of_training_and_counted()
    {
        var import = Import(
            """{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]}""" + "\n" +
            """{"messages": [{"role": "user", "content": "Bye"}, {"role": "assistant", "content": "Bye!"}]}""" + "\n" +
            """{"messages": [{"role": "user", "content": "no answer"}]}""", "chat.jsonl");
        var draft = new DatasetDraft(import);
        Assert.Equal(2, draft.FinalCount);
        draft.SetExcluded(1, excluded: true);
        Assert.Equal("Bye", Assert.Single(draft.FinalConversations).Messages[0].Content);
        // Sizes for the settings step: one row per conversation, its user text as the question and the assistant's as the answer.
        Assert.Equal(("Bye", "Bye!"), (draft.SizingRows[0].Instruction, draft.SizingRows[0].Output));
        Assert.NotEqual(DataImporter.Hash(import.UsableConversations), DataImporter.Hash(draft.FinalConversations));
    }
}
