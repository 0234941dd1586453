using Bunit;
using FineTune.Engine.Tokenization;
using FineTune.Web.Components.Pages.Wizard.Data;
using FineTune.Web.Components.Pages.Wizard.Settings;
using FineTune.Web.Features.Data;
using FineTune.Web.Features.Runs;
using Microsoft.AspNetCore.Components.Forms;

namespace FineTune.Tests.Web.Components;

/// <summary>The data step with a chat dataset: format detected, conversations previewed turn by turn, problems named per line in the page's language.</summary>
public sealed class ChatDataStepTests : ComponentTestContext
{
    internal const string Jsonl =
        """{"messages": [{"role": "system", "content": "你是客服。"}, {"role": "user", "content": "可以退貨嗎？"}, {"role": "assistant", "content": "七天內可以。"}]}""" + "\n" +
        """{"messages": [{"role": "user", "content": "運費呢？"}, {"role": "assistant", "content": ""}]}""" + "\n" +
        """{"messages": [{"role": "user", "content": "Hi"}, {"role": "bot?", "content": "Hello"}]}""" + "\n" +
        """{"messages": [{"role": "user", "content": "Are you there?"}]}""" + "\n" +
        """{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}""" + "\n";

    [Fact]
    public void A_chat_jsonl_shows_its_conversations_and_names_each_problem_with_its_line_in_zh_TW()
    {
        var cut = Render<DataStep>();
        cut.FindComponent<InputFile>().UploadFiles(InputFileContent.CreateFromText(Jsonl, "chat.jsonl"));

        cut.WaitForAssertion(() => Assert.Contains("5 段對話中有 2 段會用於訓練", cut.Find("[data-testid=data-usable]").TextContent));
        Assert.Contains("OpenAI messages", cut.Find("[data-testid=data-chat]").TextContent);
        string preview = cut.Find("[data-testid=data-conversations]").TextContent;
        Assert.Contains("系統", preview);
        Assert.Contains("使用者", preview);
        Assert.Contains("助理", preview);
        Assert.Contains("七天內可以。", preview);
        Assert.Contains("第 2 輪是空的", preview);
        Assert.Contains("第 2 輪：不認得的角色「bot?」", preview);
        Assert.Contains("最後一輪不是助理", preview);
        string report = cut.Find("[data-testid=data-report]").TextContent;
        Assert.Contains("檢查結果：5 段對話，2 段可用", report);
        Assert.Contains("1 個空白的對話輪次（所屬對話不使用）", report);
        Assert.Contains("第 2 行", report); // JSONL findings name their lines
        Assert.Contains("第 4 行", report);
        Assert.Empty(cut.FindAll("[data-testid=data-preview]"));
        // Conversations are written with the model's chat template.
        Assert.Equal(PromptStyle.ModelChatTemplate, State.Settings.PromptTemplate);
        Assert.Equal(2, State.Dataset!.FinalConversations.Count);
    }

    [Fact]
    public async Task Starting_a_run_stores_the_conversations_it_trains_on()
    {
        var file = Importer.Parse(System.Text.Encoding.UTF8.GetBytes(Jsonl), "chat.jsonl");
        State.File = file;
        State.OriginalFile = [1, 2, 3];
        State.Dataset = new DatasetDraft(Importer.Build(file, new ImportSettings()));
        State.Settings.PromptTemplate = PromptStyle.ModelChatTemplate;
        int? started = null;
        var cut = Render<SettingsStep>(p => p.Add(c => c.OnStarted, id => started = id));

        await cut.Find("[data-testid=start-training]").ClickAsync(new());

        var run = (await Runs.Store.GetAsync(started!.Value))!;
        Assert.Equal((RunStatus.Queued, 2, "chat.jsonl"), (run.Status, run.DatasetRows, run.DatasetFileName));
        Assert.Equal(DataImporter.Hash(State.Dataset.FinalConversations), run.DatasetHash);
        var stored = await Runs.Store.ReadConversationsAsync(run.Id);
        Assert.Equal([1, 5], stored.Select(c => c.SourceRow));
        Assert.Equal(State.Dataset.FinalConversations.SelectMany(c => c.Messages), stored.SelectMany(c => c.Messages));
        Assert.Empty(await Runs.Store.ReadDatasetAsync(run.Id));
    }
}

public sealed class ChatDataStepEnglishTests : ComponentTestContext
{
    public ChatDataStepEnglishTests() =>
        System.Globalization.CultureInfo.CurrentCulture = System.Globalization.CultureInfo.CurrentUICulture = new System.Globalization.CultureInfo("en");

    [Fact]
    public void The_same_problems_read_in_english()
    {
        var cut = Render<DataStep>();
        cut.FindComponent<InputFile>().UploadFiles(InputFileContent.CreateFromText(ChatDataStepTests.Jsonl, "chat.jsonl"));

        cut.WaitForAssertion(() => Assert.Contains("2 of 5 conversations will be used for training.", cut.Find("[data-testid=data-usable]").TextContent));
        string preview = cut.Find("[data-testid=data-conversations]").TextContent;
        Assert.Contains("Assistant", preview);
        Assert.Contains("turn 2 is empty", preview);
        Assert.Contains("turn 2: unknown role “bot?”", preview);
        Assert.Contains("does not end with the assistant", preview);
        Assert.Contains("line 2", cut.Find("[data-testid=data-report]").TextContent);
    }

    [Fact]
    public void A_file_of_one_row_reads_one_row()
    {
        var cut = Render<DataStep>();
        cut.FindComponent<InputFile>().UploadFiles(InputFileContent.CreateFromText("instruction,output\n營業時間？,早上九點到晚上六點。\n", "one.csv"));

        cut.WaitForAssertion(() => Assert.Contains("1 of 1 row will be used for training.", cut.Find("[data-testid=data-usable]").TextContent));
    }
}
