using LLama;
using LLama.Common;
using LLama.Native;

namespace FineTune.Tests.Export;

/// <summary>llama.cpp (LLamaSharp 0.30 with its CPU backend) reading a GGUF file: greedy tokens and tokenization.</summary>
internal sealed class LlamaCpp : IDisposable
{
    private static readonly Lock Gate = new();
    private readonly LLamaWeights _weights;
    private readonly ModelParams _parameters;

    public LlamaCpp(string ggufPath, uint contextSize = 256)
    {
        lock (Gate)
        {
            if (!NativeLibraryConfig.LLama.LibraryHasLoaded)
                NativeLibraryConfig.All.WithLogCallback((level, message) => { if (level == LLamaLogLevel.Error) Console.Error.Write(message); });
        }
        _parameters = new ModelParams(ggufPath) { ContextSize = contextSize, GpuLayerCount = 0, Threads = 1, BatchSize = contextSize };
        _weights = LLamaWeights.LoadFromFile(_parameters);
    }

    public IReadOnlyDictionary<string, string> Metadata => _weights.Metadata;

    public int VocabularyCount => _weights.Vocab.Count;

    /// <summary>Argmax continuation of <paramref name="prompt"/>, one token per decode with llama.cpp's KV cache, no stop on eos.</summary>
    public int[] Greedy(IReadOnlyList<int> prompt, int count)
    {
        using var context = _weights.CreateContext(_parameters);
        var batch = new LLamaBatch();
        for (int i = 0; i < prompt.Count; i++) batch.Add(prompt[i], i, LLamaSeqId.Zero, i == prompt.Count - 1);
        var result = new int[count];
        int position = prompt.Count;
        for (int step = 0; step < count; step++)
        {
            var status = context.NativeHandle.Decode(batch);
            if (status != DecodeResult.Ok) throw new InvalidOperationException($"llama_decode returned {status}.");
            var logits = context.NativeHandle.GetLogitsIth(batch.TokenCount - 1);
            result[step] = ArgMax(logits);
            batch.Clear();
            batch.Add(result[step], position++, LLamaSeqId.Zero, true);
        }
        return result;
    }

    /// <summary>llama_tokenize with special tokens parsed (as HF reads "&lt;|im_start|&gt;" in text).</summary>
    public int[] Tokenize(string text, bool addBos) =>
        _weights.Tokenize(text, addBos, special: true, System.Text.Encoding.UTF8).Select(t => (int)t).ToArray();

    private static int ArgMax(ReadOnlySpan<float> values)
    {
        int best = 0;
        for (int i = 1; i < values.Length; i++) if (values[i] > values[best]) best = i;
        return best;
    }

    public void Dispose() => _weights.Dispose();
}
