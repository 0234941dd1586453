using System.Text;

namespace FineTune.Web.Features.Data;

/// <summary>Which columns hold what. Columns are 0-based; <see cref="HeaderRowIndex"/> indexes <see cref="SheetTable.Rows"/> (-1: no header).</summary>
public sealed record ColumnMapping(int HeaderRowIndex, int Instruction, int Output, int? Input = null, int? System = null);

/// <summary>
/// Finds the header row — not necessarily the first: title rows above it are common in real workbooks —
/// and guesses the instruction/output/input/system columns from its names (English and Chinese).
/// </summary>
public static class ColumnGuesser
{
    /// <summary>How many non-blank rows from the top may hold the header.</summary>
    public const int HeaderSearchRows = 20;

    private static readonly string[] InstructionNames = ["instruction", "question", "prompt", "query", "問題", "提問", "指令", "題目", "问题", "提问", "问"];
    private static readonly string[] OutputNames = ["output", "answer", "response", "completion", "回答", "答案", "回應", "答覆", "解答", "回应", "答复", "答"];
    private static readonly string[] InputNames = ["input", "context", "輸入", "補充", "上下文", "背景", "输入", "补充"];
    private static readonly string[] SystemNames = ["system", "systemprompt", "系統", "系統提示", "系统"];

    public static ColumnMapping Guess(SheetTable sheet)
    {
        int seen = 0;
        for (int i = 0; i < sheet.Rows.Count && seen < HeaderSearchRows; i++)
        {
            var row = sheet.Rows[i];
            if (row.IsBlank) continue;
            seen++;
            var names = row.Cells.Select(c => Normalize(c.Text)).ToArray();
            int instruction = Best(names, InstructionNames, exclude: []);
            int output = Best(names, OutputNames, exclude: [instruction]);
            if (instruction < 0 || output < 0) continue;
            int input = Best(names, InputNames, exclude: [instruction, output]);
            int system = Best(names, SystemNames, exclude: [instruction, output, input]);
            return new ColumnMapping(i, instruction, output, input < 0 ? null : input, system < 0 ? null : system);
        }

        // No header: the first two columns that hold anything are question and answer.
        var used = Enumerable.Range(0, sheet.ColumnCount).Where(c => sheet.Rows.Any(r => !r[c].IsBlank)).ToArray();
        return new ColumnMapping(-1, used.Length > 0 ? used[0] : 0, used.Length > 1 ? used[1] : 1);
    }

    /// <summary>Exact name beats a name that merely contains a synonym ("問題（必填）").</summary>
    private static int Best(string[] names, string[] synonyms, int[] exclude)
    {
        int best = -1, bestScore = 0;
        for (int c = 0; c < names.Length; c++)
        {
            if (exclude.Contains(c) || names[c].Length == 0) continue;
            int score = synonyms.Contains(names[c]) ? 3
                : synonyms.Any(s => s.Length > 1 && names[c].Contains(s, StringComparison.Ordinal)) ? 2
                : synonyms.Any(s => names[c].Contains(s, StringComparison.Ordinal)) ? 1 : 0;
            if (score > bestScore) { best = c; bestScore = score; }
        }
        return best;
    }

    internal static string Normalize(string text)
    {
        var sb = new StringBuilder(text.Length);
        foreach (char ch in text.Trim().ToLowerInvariant())
            if (char.IsLetterOrDigit(ch)) sb.Append(ch);
        return sb.ToString();
    }

    /// <summary>Excel column letters: 0 → A, 27 → AB.</summary>
    public static string ColumnLetter(int index)
    {
        string s = string.Empty;
        for (int n = index + 1; n > 0; n = (n - 1) / 26)
            s = (char)('A' + (n - 1) % 26) + s;
        return s;
    }
}
