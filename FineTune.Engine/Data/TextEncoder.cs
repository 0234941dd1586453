namespace FineTune.Engine.Data;

/// <summary>
/// The little of a tokenizer that building training examples needs: text → ids (without special tokens
/// added), the end-of-sequence id, and ids → text for messages. Any tokenizer satisfies it through
/// <see cref="TextEncoder(Func{string, IReadOnlyList{int}}, int, Func{IReadOnlyList{int}, string}?)"/>,
/// e.g. <c>new TextEncoder(t.Encode, t.EosTokenId, t.Decode)</c> for FineTune.Engine.Tokenization's ITextTokenizer.
/// </summary>
/// <param name="Encode">Text to token ids, no BOS/EOS added.</param>
/// <param name="EosTokenId">Appended after every answer so the model learns to stop.</param>
/// <param name="Decode">Token ids to text (optional; for previews and messages).</param>
public sealed record TextEncoder(Func<string, IReadOnlyList<int>> Encode, int EosTokenId, Func<IReadOnlyList<int>, string>? Decode = null)
{
    /// <summary>
    /// A model's tokenizer for training: no special tokens added around prompt or answer (the template writes
    /// any it needs), and its eos_token (or generation_config's first eos id) appended after each answer.
    /// </summary>
    public static TextEncoder From(Tokenization.ITextTokenizer tokenizer)
    {
        int eos = tokenizer.EosTokenId ?? tokenizer.EosTokenIds.FirstOrDefault(-1);
        if (eos < 0) throw new ArgumentException("The tokenizer has no eos_token; training needs one to teach the model where an answer ends.", nameof(tokenizer));
        return new TextEncoder(text => tokenizer.Encode(text, addSpecialTokens: false), eos, ids => tokenizer.Decode(ids));
    }
}

/// <summary>Turns a row into the prompt the model reads and the answer it must learn to write.</summary>
public delegate (string Prompt, string Answer) PromptFormatter(QaRow row);
