namespace FineTune.Engine.Tokenization;

/// <summary>
/// Turns generated ids into text pieces as they arrive, emitting only complete characters.
/// A byte-level token can hold half of a UTF-8 character (Chinese and emoji often are split), so the
/// text is held back while its decoding ends in U+FFFD. Each step decodes a short window that starts a
/// few tokens back (vLLM's incremental detokenizer), so decoders that strip a leading space still join
/// pieces correctly and the cost stays linear in the length of the answer.
/// </summary>
public sealed class StreamingDecoder
{
    private readonly ITextTokenizer _tokenizer;
    private readonly bool _skipSpecialTokens;
    private readonly List<int> _ids = [];
    private int _prefixOffset;
    private int _readOffset;

    public StreamingDecoder(ITextTokenizer tokenizer, bool skipSpecialTokens = true)
    {
        _tokenizer = tokenizer;
        _skipSpecialTokens = skipSpecialTokens;
    }

    /// <summary>All ids pushed so far.</summary>
    public IReadOnlyList<int> Ids => _ids;

    /// <summary>Adds one id; returns the new text it completes, or "" while a character is still incomplete.</summary>
    public string Push(int id)
    {
        _ids.Add(id);
        string prefixText = DecodeRange(_prefixOffset, _readOffset);
        string fullText = DecodeRange(_prefixOffset, _ids.Count);
        if (fullText.Length <= prefixText.Length || fullText.EndsWith('\uFFFD')) return "";
        // The window's first tokens decode the same way in both, so the new text is the tail.
        string piece = fullText.StartsWith(prefixText, StringComparison.Ordinal)
            ? fullText[prefixText.Length..]
            : fullText[CommonPrefixLength(prefixText, fullText)..];
        _prefixOffset = _readOffset;
        _readOffset = _ids.Count;
        return piece;
    }

    /// <summary>Text still held back at the end (an incomplete character becomes U+FFFD, as HF decode does).</summary>
    public string Flush()
    {
        if (_readOffset == _ids.Count) return "";
        string prefixText = DecodeRange(_prefixOffset, _readOffset);
        string fullText = DecodeRange(_prefixOffset, _ids.Count);
        _prefixOffset = _readOffset = _ids.Count;
        return fullText.Length > prefixText.Length ? fullText[CommonPrefixLength(prefixText, fullText)..] : "";
    }

    private string DecodeRange(int start, int end) =>
        start >= end ? "" : _tokenizer.Decode(_ids.Skip(start).Take(end - start), _skipSpecialTokens);

    private static int CommonPrefixLength(string a, string b)
    {
        int n = Math.Min(a.Length, b.Length), i = 0;
        while (i < n && a[i] == b[i]) i++;
        return i;
    }
}
