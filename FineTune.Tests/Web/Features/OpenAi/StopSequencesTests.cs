using FineTune.Web.Features.OpenAi;

namespace FineTune.Tests.Web.Features.OpenAi;

public class StopSequencesTests
{
    [Fact]
    public void Text_ends_before_a_stop_sequence_split_across_pieces_and_none_of_it_is_sent()
    {
        var stops = new StopSequences(["###"]);
        var sent = new List<string> { stops.Push("Answer #"), stops.Push("#"), stops.Push("# more") };
        Assert.Equal(["Answer ", "", ""], sent);
        Assert.True(stops.Stopped);
        Assert.Equal("", stops.Flush());
    }

    [Fact]
    public void A_held_back_prefix_is_sent_when_it_turns_out_not_to_be_a_stop()
    {
        var stops = new StopSequences(["</s>", "\n\n"]);
        Assert.Equal("a", stops.Push("a<"));
        Assert.Equal("</b", stops.Push("/b"));
        Assert.Equal("c", stops.Push("c\n"));
        Assert.Equal("\n", stops.Flush());
        Assert.False(stops.Stopped);
    }
}

public class ApiSnippetsTests
{
    [Fact]
    public void The_snippets_call_the_runs_model_at_the_apps_v1_url_with_the_token_only_when_exposed()
    {
        string curl = ApiSnippets.Curl("http://localhost:5080/v1", "finetune-run-7", exposed: false, 0.7, 0.9);
        Assert.Contains("curl http://localhost:5080/v1/chat/completions", curl);
        Assert.Contains("\"model\": \"finetune-run-7\", \"temperature\": 0.7, \"top_p\": 0.9", curl);
        Assert.Contains("Bearer not-needed", curl);
        string python = ApiSnippets.Python("http://10.0.0.2:8080/v1", "finetune-run-7", exposed: true, 0.3, 1);
        Assert.Contains("OpenAI(base_url=\"http://10.0.0.2:8080/v1\", api_key=\"YOUR-ACCESS-TOKEN\")", python);
        Assert.Contains("model=\"finetune-run-7\", temperature=0.3, top_p=1, stream=True", python);
    }
}
