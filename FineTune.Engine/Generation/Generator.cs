using System.Runtime.CompilerServices;
using FineTune.Engine.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Generation;

/// <summary>
/// Token-level generation for one sequence (batch 1) with a KV cache: the prompt is run once, then one token
/// per step. Ids in, ids out; stops after a stop id, at max_new_tokens, or at the model's context length.
/// </summary>
public sealed class Generator(CausalLM model)
{
    public CausalLM Model { get; } = model;

    /// <summary>Generates synchronously; each id is yielded as soon as it is chosen.</summary>
    public IEnumerable<int> Generate(IReadOnlyList<int> promptIds, GenerationSettings settings, CancellationToken cancellationToken = default)
    {
        using var session = Start(promptIds, settings);
        while (session.Step(cancellationToken) is int id) yield return id;
    }

    /// <summary>
    /// Generates on the thread pool, one step at a time, so a UI thread stays free; cancel with the token
    /// (throws OperationCanceledException between steps).
    /// </summary>
    public async IAsyncEnumerable<int> GenerateAsync(
        IReadOnlyList<int> promptIds, GenerationSettings settings, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        using var session = Start(promptIds, settings);
        while (await Task.Run(() => session.Step(cancellationToken), cancellationToken).ConfigureAwait(false) is int id)
            yield return id;
    }

    private Session Start(IReadOnlyList<int> promptIds, GenerationSettings settings)
    {
        settings.Validate();
        if (promptIds.Count == 0) throw new ArgumentException("The prompt has no tokens; generation needs at least one.", nameof(promptIds));
        int vocab = Model.Config.VocabSize;
        if (promptIds.Any(id => id < 0 || id >= vocab))
            throw new ArgumentException($"The prompt holds token id {promptIds.First(id => id < 0 || id >= vocab)}, outside this model's vocabulary (0..{vocab - 1}). Was it tokenized for another model?", nameof(promptIds));
        int contextLength = Model.Config.MaxPositionEmbeddings;
        if (promptIds.Count >= contextLength)
            throw new ArgumentException($"The prompt has {promptIds.Count} tokens; this model reads at most {contextLength}. Shorten the prompt.", nameof(promptIds));
        int maxNew = Math.Min(settings.MaxNewTokens, contextLength - promptIds.Count);
        return new Session(Model, promptIds, settings, maxNew);
    }

    /// <summary>One generation's state: the cache, the sequence so far and the random source.</summary>
    private sealed class Session : IDisposable
    {
        private readonly CausalLM _model;
        private readonly GenerationSettings _settings;
        private readonly KvCache _cache;
        private readonly List<int> _sequence;
        private readonly Random _random;
        private readonly int _maxNew;
        private int _pending;     // ids not yet run through the model (the prompt, then each new token)
        private int _generated;
        private bool _done;

        public Session(CausalLM model, IReadOnlyList<int> promptIds, GenerationSettings settings, int maxNew)
        {
            _model = model;
            _settings = settings;
            _maxNew = maxNew;
            _sequence = [.. promptIds];
            _pending = promptIds.Count;
            _random = settings.Seed is int seed ? new Random(seed) : new Random();
            _cache = model.NewCache(promptIds.Count + maxNew);
        }

        /// <summary>Chooses the next id, or returns null when generation is over.</summary>
        public int? Step(CancellationToken cancellationToken)
        {
            if (_done || _generated >= _maxNew) return null;
            cancellationToken.ThrowIfCancellationRequested();
            int id = PlainGreedy(_settings) ? NextGreedyId() : LogitsProcessing.NextToken(NextLogits(), _sequence, _settings, _random);
            _sequence.Add(id);
            _pending = 1;
            _generated++;
            _done = _settings.StopTokenIds.Contains(id);
            return id;
        }

        /// <summary>
        /// Greedy with nothing that needs the host's view of the logits (no repetition penalty): the argmax is taken
        /// where the logits are, and only the id crosses to the host, not V logits (600 KB for Qwen2's 152k vocabulary,
        /// converted and scanned on the host: a few ms of every decoded token on an H200, where decode is bound by the host).
        /// </summary>
        private static bool PlainGreedy(GenerationSettings settings) => !settings.DoSample && settings.RepetitionPenalty == 1.0;

        /// <summary>
        /// The id <see cref="LogitsProcessing.ArgMax"/> picks, computed on the device: torch's argmax returns the first
        /// of equal maxima as ArgMax does, and comparing the logits in their own dtype orders them as their exact fp32
        /// values do. (For logits with NaN, which no working model gives, torch's argmax picks the NaN.)
        /// </summary>
        private int NextGreedyId()
        {
            using var noGrad = no_grad();
            using var scope = NewDisposeScope();
            return (int)LastLogits().argmax().item<long>();
        }

        /// <summary>Runs the pending ids and returns the last position's logits (V) as fp32 on the host.</summary>
        private float[] NextLogits()
        {
            using var noGrad = no_grad(); // grad mode is per thread; each step may run on another one
            using var scope = NewDisposeScope();
            return LastLogits().to(ScalarType.Float32).cpu().data<float>().ToArray();
        }

        /// <summary>Runs the pending ids through the model; the last position's logits (V), on the model's device.</summary>
        private Tensor LastLogits()
        {
            long[] ids = _sequence.Skip(_sequence.Count - _pending).Select(i => (long)i).ToArray();
            var input = tensor(ids, [1, ids.Length]);                               // (1, T)
            var hidden = _model.HiddenStates(input, cache: _cache);                 // (1, T, H)
            var last = hidden.narrow(1, hidden.shape[1] - 1, 1);                   // (1, 1, H)
            return _model.lm_head.forward(last).reshape(-1);                       // (V)
        }

        public void Dispose() => _cache.Dispose();
    }
}
