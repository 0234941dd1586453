using FineTune.Engine.Backend;
using FineTune.Engine.Generation;
using FineTune.Engine.Models;
using FineTune.Engine.Tokenization;
using FineTune.Tests.Models;
using static TorchSharp.torch;
using Generator = FineTune.Engine.Generation.Generator;

namespace FineTune.Tests.Generation;

/// <summary>Generation behaviour on the tiny qwen2 fixture: cache consistency, stops, seeds, cancellation, text.</summary>
public sealed class GeneratorTests : IDisposable
{
    private static readonly int[] Prompt = [497, 834, 515, 414, 532, 293];
    private readonly CausalLM _model;
    private readonly Generator _generator;

    public GeneratorTests()
    {
        _ = ComputeBackend.Current;
        _model = ModelLoader.Load(ModelFixtures.Folder("qwen2"), new ModelLoadOptions { Device = CPU, DType = ScalarType.Float32 });
        _generator = new Generator(_model);
    }

    public void Dispose() => _model.Dispose();

    [Fact]
    public void Incremental_logits_with_the_cache_equal_a_full_forward()
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var ids = tensor(Prompt.Select(i => (long)i).ToArray(), [1, Prompt.Length]);
        var full = _model.Logits(ids);                                                   // (1, T, V)
        using var cache = _model.NewCache(Prompt.Length);
        var first = _model.Logits(ids.narrow(1, 0, 4), cache: cache);                    // positions 0..3
        var second = _model.Logits(ids.narrow(1, 4, 1), cache: cache);                  // position 4
        var third = _model.Logits(ids.narrow(1, 5, 1), cache: cache);                    // position 5
        var incremental = cat([first, second, third], 1);
        Assert.Equal(Prompt.Length, cache.Length);
        double diff = (incremental - full).abs().max().item<float>();
        Assert.True(diff < 1e-5, $"max diff {diff}");
    }

    [Fact]
    public void Greedy_ids_are_the_host_argmax_of_each_full_forward()
    {
        int[] generated = _generator.Generate(Prompt, GenerationSettings.Greedy(12)).ToArray();

        var sequence = Prompt.ToList();
        using (no_grad())
            for (int i = 0; i < 12; i++)
            {
                using var scope = NewDisposeScope();
                var logits = _model.Logits(tensor(sequence.Select(id => (long)id).ToArray(), [1, sequence.Count])); // (1, T, V)
                float[] last = logits[0, -1].to(ScalarType.Float32).data<float>().ToArray();
                sequence.Add(LogitsProcessing.ArgMax(last));
            }
        Assert.Equal(sequence.Skip(Prompt.Length), generated);
    }

    /// <summary>
    /// Plain greedy takes the argmax where the logits are, in their dtype; the host's ArgMax took it over fp32 copies.
    /// Both pick the first of equal maxima (16-bit logits tie often), on the CPU and, where there is one, the GPU.
    /// </summary>
    [Theory]
    [InlineData(ScalarType.BFloat16)]
    [InlineData(ScalarType.Float16)]
    [InlineData(ScalarType.Float32)]
    public void Argmax_in_the_logits_dtype_picks_the_first_of_equal_maxima_as_the_host_does(ScalarType dtype)
    {
        using var scope = NewDisposeScope();
        var devices = cuda.is_available() ? new[] { CPU, CUDA } : new[] { CPU };
        foreach (var device in devices)
            for (int draw = 0; draw < 20; draw++)
            {
                var logits = (randn(152064) * 4).to(dtype);
                // The maximum again at three more positions: ties the way rounding to 16 bits makes them.
                long first = logits.argmax().item<long>();
                foreach (long at in new[] { 17L, 90000L, 152063L }) logits[at] = logits[first];
                int host = LogitsProcessing.ArgMax(logits.to(ScalarType.Float32).data<float>().ToArray());
                Assert.Equal(host, (int)logits.to(device).argmax().item<long>());
            }
    }

    [Fact]
    public void Stops_after_a_stop_token_and_returns_it_last()
    {
        int[] free = _generator.Generate(Prompt, GenerationSettings.Greedy(8)).ToArray();
        Assert.Equal(8, free.Length);
        int stop = free[2];
        int firstStop = Array.IndexOf(free, stop);
        int[] stopped = _generator.Generate(Prompt, GenerationSettings.Greedy(8, [stop])).ToArray();
        Assert.Equal(free.Take(firstStop + 1), stopped);
    }

    [Fact]
    public void Sampling_with_a_seed_is_reproducible_and_differs_across_seeds()
    {
        var settings = new GenerationSettings { DoSample = true, Temperature = 1.5, TopK = 0, TopP = 1.0, MaxNewTokens = 24, Seed = 11 };
        int[] a = _generator.Generate(Prompt, settings).ToArray();
        int[] b = _generator.Generate(Prompt, settings).ToArray();
        int[] c = _generator.Generate(Prompt, settings with { Seed = 12 }).ToArray();
        Assert.Equal(a, b);
        Assert.NotEqual(a, c);
    }

    [Fact]
    public void Respects_max_new_tokens_and_the_context_length()
    {
        Assert.Equal(3, _generator.Generate(Prompt, GenerationSettings.Greedy(3)).Count());
        int[] tooLong = Enumerable.Repeat(100, _model.Config.MaxPositionEmbeddings).ToArray();
        var error = Assert.Throws<ArgumentException>(() => _generator.Generate(tooLong, GenerationSettings.Greedy(3)).ToArray());
        Assert.Contains("at most", error.Message);
        var outside = Assert.Throws<ArgumentException>(() => _generator.Generate([1, _model.Config.VocabSize], GenerationSettings.Greedy(3)).ToArray());
        Assert.Contains(_model.Config.VocabSize.ToString(System.Globalization.CultureInfo.InvariantCulture), outside.Message);
    }

    [Fact]
    public async Task Streams_asynchronously_and_stops_when_cancelled()
    {
        using var cancel = new CancellationTokenSource();
        var received = new List<int>();
        await Assert.ThrowsAnyAsync<OperationCanceledException>(async () =>
        {
            await foreach (int id in _generator.GenerateAsync(Prompt, GenerationSettings.Greedy(50), cancel.Token))
            {
                received.Add(id);
                if (received.Count == 3) await cancel.CancelAsync();
            }
        });
        Assert.Equal(3, received.Count);
        int[] expected = _generator.Generate(Prompt, GenerationSettings.Greedy(3)).ToArray();
        Assert.Equal(expected, received);
    }

    [Fact]
    public async Task Text_generation_streams_the_decoded_greedy_answer_without_the_stop_token()
    {
        string folder = ModelFixtures.Folder("qwen2");
        var tokenizer = TokenizerLoader.Load(folder);
        var text = new TextGenerator(_generator, tokenizer);
        var settings = GenerationSettings.Greedy(12);
        string prompt = "你們的產品保固期是多久？";
        var pieces = new List<string>();
        await foreach (string piece in text.StreamAsync(prompt, settings)) pieces.Add(piece);

        int[] ids = _generator.Generate(tokenizer.Encode(prompt), settings).ToArray();
        Assert.Equal(tokenizer.Decode(ids, skipSpecialTokens: true), string.Concat(pieces));
        Assert.NotEmpty(pieces);

        // With the first generated id as a stop id, nothing is shown.
        string none = await text.GenerateAsync(prompt, settings with { StopTokenIds = new HashSet<int> { ids[0] } });
        Assert.Equal("", none);
    }

    [Fact]
    public async Task Pieces_carry_the_token_counts_and_why_generation_ended()
    {
        var tokenizer = TokenizerLoader.Load(ModelFixtures.Folder("qwen2"));
        var text = new TextGenerator(_generator, tokenizer);
        var settings = GenerationSettings.Greedy(7);
        var pieces = new List<TextPiece>();
        await foreach (var piece in text.StreamPiecesAsync(Prompt, settings)) pieces.Add(piece);

        int[] ids = _generator.Generate(Prompt, settings).ToArray();
        Assert.Equal(7, ids.Length);
        Assert.All(pieces, p => Assert.Equal(Prompt.Length, p.PromptTokens));
        Assert.Equal(new TextPiece(pieces[^1].Text, Prompt.Length, 7, FinishReason.Length), pieces[^1]); // max_new_tokens reached
        Assert.All(pieces.SkipLast(1), p => Assert.Null(p.Finish));
        Assert.Equal(pieces.Select(p => p.GeneratedTokens).Order(), pieces.Select(p => p.GeneratedTokens));
        Assert.Equal(tokenizer.Decode(ids, skipSpecialTokens: true), string.Concat(pieces.Select(p => p.Text)));

        // The third greedy id as a stop id: three ids generated (the stop one counted), two shown, finish "stop".
        var stopped = new List<TextPiece>();
        await foreach (var piece in text.StreamPiecesAsync(Prompt, settings with { StopTokenIds = new HashSet<int> { ids[2] } })) stopped.Add(piece);
        Assert.Equal(FinishReason.Stop, stopped[^1].Finish);
        Assert.Equal(Array.IndexOf(ids, ids[2]) + 1, stopped[^1].GeneratedTokens);
        Assert.Equal(tokenizer.Decode(ids[..Array.IndexOf(ids, ids[2])], skipSpecialTokens: true), string.Concat(stopped.Select(p => p.Text)));
    }

    [Fact]
    public async Task Chat_streaming_renders_the_model_template()
    {
        var tokenizer = TokenizerLoader.Load(ModelFixtures.Folder("qwen2"));
        var text = new TextGenerator(_generator, tokenizer);
        var settings = GenerationSettings.Greedy(8);
        ChatMessage[] messages = [ChatMessage.User("可以退貨嗎？")];
        var pieces = new List<string>();
        await foreach (string piece in text.StreamChatAsync(messages, settings)) pieces.Add(piece);

        var ids = ChatTemplate.ForTokenizer(tokenizer)!.Encode(messages, addGenerationPrompt: true);
        Assert.Equal(await text.GenerateAsync(tokenizer.Decode(ids), settings, addSpecialTokens: false), string.Concat(pieces));
    }

    [Fact]
    public void Default_settings_come_from_generation_config_and_the_tokenizer()
    {
        string folder = ModelFixtures.Folder("qwen-v1");
        var config = ModelConfig.Load(folder);
        var settings = GenerationSettings.FromModelFolder(folder, config, [4242]);
        Assert.True(settings.DoSample);
        Assert.Equal(0.8, settings.TopP);
        Assert.Equal(0, settings.TopK);
        Assert.Equal(1.1, settings.RepetitionPenalty);
        Assert.Equal(512, settings.MaxNewTokens);
        Assert.Equal(new HashSet<int> { 900, 902, 4242 }, settings.StopTokenIds); // eos, stop_words_ids [[900],[902]], extra
    }
}
