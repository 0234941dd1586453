using System.Runtime.CompilerServices;
using System.Text;
using FineTune.Engine.Tokenization;

namespace FineTune.Engine.Generation;

/// <summary>
/// Text in, text pieces out: tokenizes the (already formatted) prompt, runs the <see cref="Generator"/> and
/// decodes the new ids as they come, holding back half-finished characters. The stop token is not shown.
/// </summary>
public sealed class TextGenerator(Generator generator, ITextTokenizer tokenizer)
{
    public Generator Generator { get; } = generator;

    public ITextTokenizer Tokenizer { get; } = tokenizer;

    /// <summary>The model folder's generation defaults, stopping also at the tokenizer's eos tokens (e.g. &lt;|im_end|&gt;).</summary>
    public GenerationSettings DefaultSettings(string modelFolder) =>
        GenerationSettings.FromModelFolder(modelFolder, Generator.Model.Config, Tokenizer.EosTokenIds);

    /// <summary>
    /// Streams the answer to <paramref name="prompt"/>. <paramref name="addSpecialTokens"/>: true for plain text
    /// (BOS added where the tokenizer adds it, as HF tokenizer(text)), false for text rendered by a chat template,
    /// which writes its own special tokens (as HF apply_chat_template).
    /// </summary>
    public IAsyncEnumerable<string> StreamAsync(
        string prompt, GenerationSettings settings, bool addSpecialTokens = true, CancellationToken cancellationToken = default) =>
        StreamAsync(Tokenizer.Encode(prompt, addSpecialTokens), settings, cancellationToken);

    /// <summary>Streams the answer to prompt ids already encoded (e.g. by the prompt template used in training).</summary>
    public async IAsyncEnumerable<string> StreamAsync(
        IReadOnlyList<int> ids, GenerationSettings settings, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        await foreach (var piece in StreamPiecesAsync(ids, settings, cancellationToken).ConfigureAwait(false))
            if (piece.Text.Length > 0) yield return piece.Text;
    }

    /// <summary>
    /// Streams the answer with the token counts so far; the last piece (its text may be empty) says why generation
    /// ended. Generated tokens count every id the model chose, the stop token too.
    /// </summary>
    public async IAsyncEnumerable<TextPiece> StreamPiecesAsync(
        IReadOnlyList<int> ids, GenerationSettings settings, [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var decoder = new StreamingDecoder(Tokenizer, skipSpecialTokens: true);
        int generated = 0;
        var finish = FinishReason.Length;
        await foreach (int id in Generator.GenerateAsync(ids, settings, cancellationToken).ConfigureAwait(false))
        {
            generated++;
            if (settings.StopTokenIds.Contains(id))
            {
                finish = FinishReason.Stop;
                break;
            }
            // The model's vocabulary is often padded past the tokenizer's (Qwen2.5: 151936 rows, 151665 tokens);
            // HF's decode drops such ids silently, and so do we.
            if ((uint)id >= (uint)Tokenizer.VocabSize) continue;
            string piece = decoder.Push(id);
            if (piece.Length > 0) yield return new TextPiece(piece, ids.Count, generated);
        }
        yield return new TextPiece(decoder.Flush(), ids.Count, generated, finish);
    }

    /// <summary>
    /// Streams the assistant's next reply to a conversation, rendered with the model's chat template (as HF
    /// apply_chat_template(messages, add_generation_prompt=True)); throws when the model has no chat template.
    /// </summary>
    public IAsyncEnumerable<string> StreamChatAsync(
        IReadOnlyList<ChatMessage> messages, GenerationSettings settings, CancellationToken cancellationToken = default)
    {
        var chat = ChatTemplate.ForTokenizer(Tokenizer)
            ?? throw new PromptTemplateException("This model has no chat template; use a plain or tutorial prompt with StreamAsync instead.");
        return StreamAsync(chat.Encode(messages, addGenerationPrompt: true), settings, cancellationToken);
    }

    /// <summary>The whole answer at once.</summary>
    public async Task<string> GenerateAsync(string prompt, GenerationSettings settings, bool addSpecialTokens = true, CancellationToken cancellationToken = default)
    {
        var text = new StringBuilder();
        await foreach (string piece in StreamAsync(prompt, settings, addSpecialTokens, cancellationToken).ConfigureAwait(false))
            text.Append(piece);
        return text.ToString();
    }
}
