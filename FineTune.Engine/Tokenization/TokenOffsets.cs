using System.Text;
using FineTune.Engine.Tokenization.Jinja;

namespace FineTune.Engine.Tokenization;

/// <summary>A tokenizer that can say which bytes of the text each token stands for (byte-level BPE, tiktoken).</summary>
public interface ITokenBytes
{
    /// <summary>The bytes of the text a token stands for, or null when the token's bytes are not the text's (SentencePiece pieces).</summary>
    byte[]? TokenBytes(int id);
}

/// <summary>
/// Where each token of an encoded text lies in that text, as HF tokenizers' offsets do: a token covers every
/// character any of its bytes belong to, so the tokens of one split Chinese character or emoji all cover it.
/// Offsets are UTF-16 indices into the text. Worked out from each token's bytes (the tokenizers library behind
/// <see cref="TokenizerJson"/> gives ids only); when a normalizer changed the text (NFC), against the normalized
/// text with positions mapped back; for tokenizers without byte views, from the decoded pieces.
/// </summary>
public sealed class TokenOffsets
{
    private readonly (int Start, int End)[] _offsets;
    private readonly int[] _firstTokenAt; // character index → first token covering it, -1 where none
    private readonly Func<int, int> _toTokenText; // a position in the caller's text → the same position in the text the tokens cover

    private TokenOffsets((int Start, int End)[] offsets, int textLength, Func<int, int> toTokenText)
    {
        _offsets = offsets;
        _toTokenText = toTokenText;
        _firstTokenAt = new int[textLength];
        Array.Fill(_firstTokenAt, -1);
        for (int t = offsets.Length - 1; t >= 0; t--)
            for (int c = offsets[t].Start; c < offsets[t].End && c < textLength; c++)
                _firstTokenAt[c] = t;
    }

    /// <summary>(start, end) of each token in the text the tokens cover.</summary>
    public IReadOnlyList<(int Start, int End)> Offsets => _offsets;

    /// <summary>HF's <c>char_to_token</c>: the first token covering the character at <paramref name="index"/> of the text, or null.</summary>
    public int? CharToToken(int index)
    {
        int at = _toTokenText(index);
        return at >= 0 && at < _firstTokenAt.Length && _firstTokenAt[at] >= 0 ? _firstTokenAt[at] : null;
    }

    /// <summary>The offsets of <paramref name="ids"/>, the encoding of <paramref name="text"/> (no special tokens added).</summary>
    /// <exception cref="ChatTemplateException">The tokens do not spell the text (a tokenizer that rewrites text beyond NFC).</exception>
    public static TokenOffsets Of(ITextTokenizer tokenizer, string text, IReadOnlyList<int> ids)
    {
        if (tokenizer is ITokenBytes bytes && ByteSpans(bytes, ids) is { } spans)
        {
            if (FromBytes(text, spans) is { } exact) return new TokenOffsets(exact, text.Length, i => i);
            string normalized = text.Normalize(NormalizationForm.FormC);
            if (FromBytes(normalized, spans) is { } onNormalized)
                return new TokenOffsets(onNormalized, normalized.Length, i => text[..i].Normalize(NormalizationForm.FormC).Length);
        }
        return FromDecodedPieces(tokenizer, text, ids)
            ?? throw new ChatTemplateException(
                "The tokenizer's tokens do not spell out the chat text (its normalizer rewrites the text), so the assistant's " +
                "tokens cannot be found for the loss. Use a model with a byte-level BPE tokenizer (Qwen, Llama 3, Mistral v0.3+).");
    }

    /// <summary>Each token's bytes, joined; null when a token has no byte view.</summary>
    private static (byte[] Bytes, int[] Ends)? ByteSpans(ITokenBytes tokenizer, IReadOnlyList<int> ids)
    {
        var all = new List<byte>();
        var ends = new int[ids.Count];
        for (int t = 0; t < ids.Count; t++)
        {
            if (tokenizer.TokenBytes(ids[t]) is not { } b) return null;
            all.AddRange(b);
            ends[t] = all.Count;
        }
        return ([.. all], ends);
    }

    private static (int, int)[]? FromBytes(string text, (byte[] Bytes, int[] Ends) spans)
    {
        byte[] utf8 = Encoding.UTF8.GetBytes(text);
        if (!utf8.AsSpan().SequenceEqual(spans.Bytes)) return null;
        // byte index → index of the UTF-16 character (the high surrogate of a pair) it belongs to, and that character's width
        var charOf = new int[utf8.Length];
        var widthOf = new int[utf8.Length];
        int b = 0;
        for (int c = 0; c < text.Length;)
        {
            int width = char.IsHighSurrogate(text[c]) && c + 1 < text.Length ? 2 : 1;
            int count = Encoding.UTF8.GetByteCount(text.AsSpan(c, width));
            for (int k = 0; k < count; k++) { charOf[b + k] = c; widthOf[b + k] = width; }
            b += count;
            c += width;
        }
        var offsets = new (int, int)[spans.Ends.Length];
        int start = 0;
        for (int t = 0; t < offsets.Length; t++)
        {
            int end = spans.Ends[t];
            int at = start < utf8.Length ? charOf[start] : text.Length;
            offsets[t] = end > start ? (at, charOf[end - 1] + widthOf[end - 1]) : (at, at);
            start = end;
        }
        return offsets;
    }

    /// <summary>Cumulative decoded text (complete characters only), as a streaming detokenizer sees it; null unless it spells the text.</summary>
    private static TokenOffsets? FromDecodedPieces(ITextTokenizer tokenizer, string text, IReadOnlyList<int> ids)
    {
        var decoder = new StreamingDecoder(tokenizer, skipSpecialTokens: false);
        var offsets = new (int, int)[ids.Count];
        var decoded = new StringBuilder();
        for (int t = 0; t < ids.Count; t++)
        {
            int start = decoded.Length;
            decoded.Append(decoder.Push(ids[t]));
            offsets[t] = (start, decoded.Length);
        }
        decoded.Append(decoder.Flush());
        return decoded.ToString() == text ? new TokenOffsets(offsets, text.Length, i => i) : null;
    }
}

/// <summary>HF's assistant-token mask from the character spans of the template's {% generation %} blocks.</summary>
public static class AssistantMask
{
    /// <summary>
    /// transformers' apply_chat_template(return_assistant_tokens_mask=True): for each span, 1 from the token holding its
    /// first character through the token holding its last; a span whose start has no token (cut off) ends the marking.
    /// </summary>
    public static int[] FromCharSpans(TokenOffsets offsets, int tokenCount, IReadOnlyList<(int Start, int End)> spans)
    {
        var mask = new int[tokenCount];
        foreach (var (startChar, endChar) in spans)
        {
            if (offsets.CharToToken(startChar) is not { } start) break;
            int? end = offsets.CharToToken(endChar - 1);
            // transformers tests `end_token` for truth, so an end in token 0 (or none) runs the mask to the end; kept for parity.
            int last = end is { } e and not 0 ? e : tokenCount - 1;
            for (int t = start; t <= last && t < tokenCount; t++) mask[t] = 1;
        }
        return mask;
    }
}
