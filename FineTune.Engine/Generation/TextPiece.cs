namespace FineTune.Engine.Generation;

/// <summary>Why generation ended, with OpenAI's meaning: a stop token ("stop") or the token limit, max_new_tokens or the model's context length ("length").</summary>
public enum FinishReason { Stop, Length }

/// <summary>
/// A decoded piece of an answer and the token counts so far: the prompt's length and the ids generated up to this
/// piece. The last piece of a stream carries <see cref="Finish"/>; its text may be empty.
/// </summary>
public sealed record TextPiece(string Text, int PromptTokens, int GeneratedTokens, FinishReason? Finish = null);
