using FineTune.Engine.Tokenization;

namespace FineTune.Engine.Data;

/// <summary>
/// One multi-turn chat to train on, as the user wrote it: an OpenAI "messages" or ShareGPT "conversations" record of a
/// JSON/JSONL file, or the rows of one conversation id in a sheet. Roles are "system", "user" and "assistant".
/// </summary>
/// <param name="SourceRow">1-based line (JSONL), record (JSON) or first row (sheet) in the original file, for messages; 0 when unknown.</param>
public sealed record Conversation(IReadOnlyList<ChatMessage> Messages, int SourceRow = 0);
