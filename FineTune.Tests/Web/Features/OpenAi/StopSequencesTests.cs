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
