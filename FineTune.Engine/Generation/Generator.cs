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
            float[] logits = NextLogits();
            int id = LogitsProcessing.NextToken(logits, _sequence, _settings, _random);
            _sequence.Add(id);
            _pending = 1;
            _generated++;
            _done = _settings.StopTokenIds.Contains(id);
            return id;
        }

        /// <summary>Runs the pending ids and returns the last position's logits (V) as fp32.</summary>
        private float[] NextLogits()
        {
            using var noGrad = no_grad(); // grad mode is per thread; each step may run on another one
            using var scope = NewDisposeScope();
            long[] ids = _sequence.Skip(_sequence.Count - _pending).Select(i => (long)i).ToArray();
            var input = tensor(ids, [1, ids.Length]);                               // (1, T)
            var hidden = _model.HiddenStates(input, cache: _cache);                 // (1, T, H)
            var last = hidden.narrow(1, hidden.shape[1] - 1, 1);                   // (1, 1, H)
            var logits = _model.lm_head.forward(last).reshape(-1);                 // (V)
            return logits.to(ScalarType.Float32).cpu().data<float>().ToArray();
        }

        public void Dispose() => _cache.Dispose();
    }
}
