using FineTune.Engine.Backend;
using FineTune.Engine.Data;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Adapters;
using FineTune.Tests.Training;
using static TorchSharp.torch;

namespace FineTune.Tests.Data;

public class TrainingExamplesTests
{
    public TrainingExamplesTests() => _ = ComputeBackend.Current;

    /// <summary>
    /// Prompt "Q:{instruction}|A:", one id per character (1 + code % 60), then the answer and EOS 63, labels -100
    /// on the prompt: the (ids, labels) a template gives, simple enough to check the layout by hand.
    /// </summary>
    private static (int[] InputIds, int[] Labels) Plain(QaRow row)
    {
        static int[] Chars(string text) => [.. text.Select(c => 1 + c % 60)];
        int[] prompt = Chars($"Q:{row.Instruction}|A:");
        int[] ids = [.. prompt, .. Chars(row.Output), 63];
        return (ids, [.. ids.Select((id, i) => i < prompt.Length ? TrainingExamples.IgnoreIndex : id)]);
    }

    [Fact]
    public void Answer_only_labels_mask_the_prompt_append_eos_and_are_shifted()
    {
        var set = TrainingExamples.Build([new QaRow("ab", "xyz")], Plain, new ExampleOptions());
        var e = Assert.Single(set.Examples);
        int promptLength = "Q:ab|A:".Length;
        Assert.Equal(promptLength + 3 + 1, e.Length);
        Assert.Equal(63, e.InputIds[^1]);
        // Targets[t] = the next token where it is an answer token (or EOS), else -100.
        for (int t = 0; t < e.Length; t++)
        {
            int expected = t + 1 < e.Length && t + 1 >= promptLength ? e.InputIds[t + 1] : -100;
            Assert.Equal(expected, e.Targets[t]);
        }
        Assert.Equal(4, e.TargetCount); // x, y, z, EOS
        Assert.Equal(1, e.SourceRow);
    }

    [Fact]
    public void Whole_text_loss_labels_every_next_token()
    {
        var set = TrainingExamples.Build([new QaRow("ab", "xyz", SourceRow: 7)], Plain, new ExampleOptions(AnswerOnlyLoss: false));
        var e = Assert.Single(set.Examples);
        Assert.Equal(e.Length - 1, e.TargetCount);
        Assert.Equal(e.InputIds[1..], e.Targets[..^1]);
        Assert.Equal(7, e.SourceRow);
    }

    [Fact]
    public void Long_rows_are_truncated_and_counted_and_rows_without_answer_left_are_dropped()
    {
        var rows = new[]
        {
            new QaRow("a", "short"),
            new QaRow("a", new string('x', 50)),
            new QaRow(new string('q', 40), "gone", SourceRow: 12),
        };
        var set = TrainingExamples.Build(rows, Plain, new ExampleOptions(MaxSeqLength: 20));
        Assert.Equal(2, set.TruncatedCount);
        Assert.Equal([12], set.DroppedSourceRows);
        Assert.Equal(2, set.Examples.Count);
        Assert.All(set.Examples, e => Assert.True(e.Length <= 20));
        Assert.Equal(-100, set.Examples[1].Targets[^1]);
    }

    [Fact]
    public void Examples_through_the_shared_prompt_template_mask_the_prompt_and_end_with_eos()
    {
        var tokenizer = TokenizerLoader.Load(TestPaths.InRepo("FineTune.Tests", "Fixtures", "models", "qwen2"));
        var template = PromptTemplate.Create(new PromptTemplateSettings(PromptStyle.Tutorial), tokenizer);
        var row = new QaRow("可以退貨嗎？", "購買後7天內可申請退貨。");
        var set = TrainingExamples.Build([row], template, new ExampleOptions());
        var e = Assert.Single(set.Examples);
        var encoded = template.Encode(row);
        Assert.Equal(encoded.InputIds, e.InputIds);
        int eos = tokenizer.EosTokenId!.Value;
        Assert.Equal(eos, e.InputIds[^1]);
        int promptLength = template.EncodePrompt(row with { Output = "" }).Count;
        Assert.All(e.Targets[..(promptLength - 1)], t => Assert.Equal(-100, t));
        Assert.Equal(e.InputIds[promptLength..], e.Targets[(promptLength - 1)..^1]);
        Assert.Equal("購買後7天內可申請退貨。", tokenizer.Decode(e.InputIds[promptLength..^1]));
    }

    [Fact]
    public void Validation_split_takes_ten_percent_from_twenty_rows_and_is_seeded()
    {
        var examples = Enumerable.Range(1, 30).Select(i => new TrainingExample([1, 2], [2, -100], i)).ToList();
        var split = Batching.Split(examples, seed: 42);
        Assert.Equal(3, split.Validation.Count);
        Assert.Equal(27, split.Train.Count);
        Assert.Empty(split.Train.Select(e => e.SourceRow).Intersect(split.Validation.Select(e => e.SourceRow)));
        Assert.Equal(split.Validation.Select(e => e.SourceRow), Batching.Split(examples, seed: 42).Validation.Select(e => e.SourceRow));
        Assert.Empty(Batching.Split(examples.Take(19).ToList(), seed: 42).Validation);
    }

    [Fact]
    public void Epoch_order_is_torch_randperm_with_seed_plus_epoch()
    {
        using var g = new Generator(42 + 1);
        var expected = randperm(10, generator: g).data<long>().ToArray().Select(v => (int)v);
        Assert.Equal(expected, Batching.EpochOrder(10, seed: 42, epoch: 1));
        Assert.NotEqual(Batching.EpochOrder(10, 42, 0), Batching.EpochOrder(10, 42, 1));
        Assert.Equal(Enumerable.Range(0, 5), Batching.EpochOrder(5, 42, 0, shuffle: false));
        Assert.Equal(10, Batching.EpochOrder(10, 42, 3).Distinct().Count());
    }

    [Fact]
    public void Rows_of_one_length_batch_side_by_side_with_plain_causal_attention()
    {
        var examples = new List<TrainingExample>
        {
            new([1, 2, 3], [-100, 3, 63], 1),
            new([4, 5, 6], [5, 6, -100], 2),
        };
        foreach (var layout in new[] { BatchLayout.Packed, BatchLayout.LengthGrouped })
        {
            using var batch = Batching.Collate(examples, [0, 1], layout, CPU);
            Assert.Equal(new long[] { 2, 3 }, batch.InputIds.shape);
            Assert.Equal(new long[] { 0, 1, 2, 0, 1, 2 }, batch.PositionIds.data<long>().ToArray());
            Assert.Equal(new long[] { -100, 3, 63, 5, 6, -100 }, batch.Targets.data<long>().ToArray());
            Assert.Equal(new long[] { 1, 2, 3, 4 }, batch.TargetPositions.data<long>().ToArray());
            Assert.Null(batch.AttentionMask); // no padding and no packing: the model's causal attention is exact
        }
    }

    [Fact]
    public void Packed_batches_restart_positions_and_keep_attention_inside_rows()
    {
        var examples = new List<TrainingExample>
        {
            new([1, 2, 3], [-100, 3, 63], 1),
            new([4, 5], [5, -100], 2),
        };
        using var batch = Batching.Collate(examples, [0, 1], BatchLayout.Packed, CPU);
        Assert.Equal(new long[] { 1, 5 }, batch.InputIds.shape);
        Assert.Equal(new long[] { 0, 1, 2, 0, 1 }, batch.PositionIds.data<long>().ToArray());
        Assert.Equal(new long[] { -100, 3, 63, 5, -100 }, batch.Targets.data<long>().ToArray());
        Assert.Equal(new long[] { 1, 2, 3 }, batch.TargetPositions.data<long>().ToArray());
        var mask = batch.AttentionMask!.reshape(5, 5).data<bool>().ToArray();
        bool[] expected =
        [
            true, false, false, false, false,
            true, true, false, false, false,
            true, true, true, false, false,
            false, false, false, true, false,
            false, false, false, true, true,
        ];
        Assert.Equal(expected, mask);
        Assert.Equal(5, batch.TokenCount);
        Assert.Equal(3, batch.TargetCount);
    }

    [Fact]
    public void Packed_forward_equals_each_row_on_its_own_and_padding_changes_nothing()
    {
        using var model = new TinyCausalLM();
        var examples = new List<TrainingExample>
        {
            new([1, 2, 3, 4], [-100, 3, 4, -100], 1),
            new([5, 6, 7], [6, 7, -100], 2),
        };
        using var scope = NewDisposeScope();
        Tensor Alone(TrainingExample e)
        {
            using var b = Batching.Collate(examples, [examples.IndexOf(e)], BatchLayout.Packed, CPU);
            return model.HiddenStates(b.InputIds, b.PositionIds, b.AttentionMask, b.Packed)[0];
        }
        var first = Alone(examples[0]);
        var second = Alone(examples[1]);
        using var packed = Batching.Collate(examples, [0, 1], BatchLayout.Packed, CPU);
        var hp = model.HiddenStates(packed.InputIds, packed.PositionIds, packed.AttentionMask, packed.Packed)[0];
        Assert.True(allclose(hp[..4], first, rtol: 1e-5, atol: 1e-5));
        Assert.True(allclose(hp[4..], second, rtol: 1e-5, atol: 1e-5));

        using var padded = Batching.Collate(examples, [0, 1], BatchLayout.LengthGrouped, CPU);
        Assert.Equal(new long[] { 2, 4 }, padded.InputIds.shape);
        Assert.Equal(-100, padded.Targets[1, 3].item<long>());
        Assert.Null(padded.AttentionMask); // right padding: plain causal attention never shows a real token the padding
        var hpad = model.HiddenStates(padded.InputIds, padded.PositionIds, padded.AttentionMask, padded.Packed);
        Assert.True(allclose(hpad[0], first, rtol: 1e-5, atol: 1e-5));
        Assert.True(allclose(hpad[1, ..3], second, rtol: 1e-5, atol: 1e-5));
    }

    [Fact]
    public void Length_grouping_sorts_each_group_longest_first_and_keeps_every_row()
    {
        var examples = Enumerable.Range(1, 10).Select(i => new TrainingExample(new int[i], new int[i], i)).ToList();
        var order = Batching.EpochOrder(10, 1, 0);
        var batches = Batching.MakeBatches(examples, order, batchSize: 3, BatchLayout.LengthGrouped);
        Assert.Equal(4, batches.Count);
        Assert.Equal(Enumerable.Range(0, 10), batches.SelectMany(b => b).Order());
        Assert.Equal(new[] { 9, 8, 7 }, batches[0]);
        var plain = Batching.MakeBatches(examples, order, batchSize: 3, BatchLayout.Packed);
        Assert.Equal(order.Take(3), plain[0]);
    }
}
