namespace FineTune.Engine.Data;

/// <summary>One question-answer pair as the user wrote it (Excel row, CSV line or JSONL object).</summary>
/// <param name="Instruction">The question or instruction (問題/指令).</param>
/// <param name="Output">The answer the model should learn (回答/回應).</param>
/// <param name="Input">Optional extra context (alpaca "input").</param>
/// <param name="System">Optional system prompt for this row.</param>
/// <param name="SourceRow">1-based row number in the original file, for messages; 0 when unknown.</param>
public sealed record QaRow(string Instruction, string Output, string Input = "", string? System = null, int SourceRow = 0);
