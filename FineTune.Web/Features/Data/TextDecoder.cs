using System.Text;

namespace FineTune.Web.Features.Data;

/// <summary>The text encodings an uploaded CSV/TSV/JSON file may be in (what Excel and editors save on zh-TW, zh-CN and other Windows).</summary>
public enum TextEncoding
{
    Utf8,
    Utf8Bom,
    Utf16LE,
    Utf16BE,
    /// <summary>Big5 as Windows writes it (code page 950): Traditional Chinese Windows.</summary>
    Big5,
    /// <summary>GB18030, a superset of GBK (code page 936) and GB2312: Simplified Chinese Windows.</summary>
    Gb18030,
}

/// <summary>Text and the encoding it was read with.</summary>
public sealed record DecodedText(string Text, TextEncoding Encoding);

/// <summary>
/// Turns the bytes of a text file into a string. A byte-order mark decides; valid UTF-8 decides (multi-byte UTF-8
/// by accident is vanishingly rare); otherwise every encoding that decodes the bytes without error is scored by how
/// plausible its text is (common Chinese characters of either script count for it; private-use, control and
/// rare characters against it), because Big5 and GBK both decode most of each other's bytes without error
/// and "the first decoder that does not throw" reads a GBK file as Big5 mojibake.
/// </summary>
public static class TextDecoder
{
    public static IReadOnlyList<TextEncoding> All { get; } = Enum.GetValues<TextEncoding>();

    public static string DisplayName(this TextEncoding encoding) => encoding switch
    {
        TextEncoding.Utf8 => "UTF-8",
        TextEncoding.Utf8Bom => "UTF-8 BOM",
        TextEncoding.Utf16LE => "UTF-16 LE",
        TextEncoding.Utf16BE => "UTF-16 BE",
        TextEncoding.Big5 => "Big5",
        TextEncoding.Gb18030 => "GB18030 / GBK",
        _ => throw new ArgumentOutOfRangeException(nameof(encoding), encoding, null),
    };

    /// <summary>Decodes with the detected encoding; throws <see cref="DataImportException"/> when none fits.</summary>
    public static DecodedText Decode(byte[] bytes) => Decode(bytes, Detect(bytes));

    /// <summary>
    /// Decodes with <paramref name="encoding"/> (the user's choice, or the detected one). Bytes that are invalid in it
    /// become U+FFFD rather than an error, so a wrong choice shows as visibly broken text the user can change back.
    /// </summary>
    public static DecodedText Decode(byte[] bytes, TextEncoding encoding)
    {
        int skip = BomLength(bytes) is var (bomEncoding, length) && Compatible(bomEncoding, encoding) ? length : 0;
        return new DecodedText(Create(encoding, strict: false).GetString(bytes, skip, bytes.Length - skip), encoding);
    }

    /// <summary>
    /// A reader that decodes <paramref name="bytes"/> in <paramref name="encoding"/> as it is read (byte-order mark skipped,
    /// invalid bytes as U+FFFD like <see cref="Decode(byte[], TextEncoding)"/>): a parser reads a 45 MB upload through it
    /// instead of holding the whole text as one 90 MB string.
    /// </summary>
    public static StreamReader OpenReader(byte[] bytes, TextEncoding encoding)
    {
        int skip = BomLength(bytes) is var (bomEncoding, length) && Compatible(bomEncoding, encoding) ? length : 0;
        return new StreamReader(new MemoryStream(bytes, skip, bytes.Length - skip, writable: false), Create(encoding, strict: false),
            detectEncodingFromByteOrderMarks: false, bufferSize: 1 << 16);
    }

    /// <summary>The text's first 64 KB decoded (for guessing the delimiter from the first line).</summary>
    public static string Start(byte[] bytes, TextEncoding encoding)
    {
        int skip = BomLength(bytes) is var (bomEncoding, length) && Compatible(bomEncoding, encoding) ? length : 0;
        return Create(encoding, strict: false).GetString(bytes, skip, Math.Min(bytes.Length - skip, 1 << 16));
    }

    /// <summary>The encoding the bytes are most plausibly in.</summary>
    public static TextEncoding Detect(byte[] bytes)
    {
        if (BomLength(bytes) is var (bom, length))
        {
            if (bom != TextEncoding.Utf8Bom || !System.Text.Unicode.Utf8.IsValid(bytes.AsSpan(length)))
                Strict(bom, bytes, length);
            return bom;
        }
        // Valid UTF-8 without NULs is checked on the bytes: decoding a large upload to a string only to find it valid cost its size twice over.
        bool validUtf8 = System.Text.Unicode.Utf8.IsValid(bytes);
        if (validUtf8 && bytes.AsSpan().IndexOf((byte)0) < 0) return TextEncoding.Utf8;

        TextEncoding? best = null;
        double bestScore = double.NegativeInfinity;
        foreach (var candidate in (TextEncoding[])[TextEncoding.Utf8, TextEncoding.Gb18030, TextEncoding.Big5, TextEncoding.Utf16LE, TextEncoding.Utf16BE])
        {
            if (candidate is TextEncoding.Utf16LE or TextEncoding.Utf16BE && !LooksLikeUtf16(bytes, candidate)) continue;
            if (candidate == TextEncoding.Utf8 && !validUtf8) continue;
            string? text = TryStrict(candidate, bytes, 0, out _);
            if (text is null) continue;
            double score = Score(text);
            if (score > bestScore) (best, bestScore) = (candidate, score);
        }
        if (best is { } found) return found;
        TryStrict(TextEncoding.Utf8, bytes, 0, out DecoderFallbackException? firstError);
        throw new DataImportException(ImportErrorCode.UnknownEncoding,
            "The text is in none of UTF-8, UTF-16, Big5 or GB18030/GBK. Save it as \"CSV UTF-8\" in Excel and upload again.",
            firstError is null ? null : $"byte {firstError.Index}", firstError);
    }

    /// <summary>
    /// How plausible a decoded text is as a Q&amp;A file: +1 for each common Chinese character (the first level of
    /// GB2312 or of Big5, about 99.5 % of running text in either script) and each CJK/full-width punctuation mark;
    /// −1 for each rarer ideograph or letter of another script (what a wrong double-byte decoding produces),
    /// −5 for control and private-use characters. ASCII letters count for every candidate alike.
    /// </summary>
    internal static double Score(string text)
    {
        double score = 0;
        for (int i = 0; i < text.Length; i++)
        {
            char c = text[i];
            score += c switch
            {
                '\t' or '\r' or '\n' => 0,
                < ' ' or '\x7f' => -5,
                < '\x80' => 0,
                >= '\u4e00' and <= '\u9fff' or >= '\u3400' and <= '\u4dbf' => CommonHanzi.Contains(c) ? 1 : -1,
                >= '\u3000' and <= '\u303f' or >= '\uff00' and <= '\uffef' => 1,
                >= '\ue000' and <= '\uf8ff' => -5,
                >= '\u00a0' and <= '\u024f' => 0,
                '\u2018' or '\u2019' or '\u201c' or '\u201d' or '\u2026' or '\u2014' => 0,
                _ => -1,
            };
        }
        return score;
    }

    /// <summary>The first-level characters of GB2312 (3,755, by frequency of use) and of Big5 (5,401 "frequently used").</summary>
    private static readonly HashSet<char> CommonHanzi = BuildCommonHanzi();

    private static HashSet<char> BuildCommonHanzi()
    {
        // Runs first of all in this class (the only static initializer that needs it): Big5 and GBK come from the code-pages provider.
        Encoding.RegisterProvider(CodePagesEncodingProvider.Instance);
        var set = new HashSet<char>();
        var gb2312 = Encoding.GetEncoding(936);
        for (int lead = 0xB0; lead <= 0xD7; lead++)
            for (int trail = 0xA1; trail <= 0xFE; trail++)
                AddIdeograph(set, gb2312.GetString([(byte)lead, (byte)trail]));
        var big5 = Encoding.GetEncoding(950);
        for (int lead = 0xA4; lead <= 0xC6; lead++)
            for (int trail = 0x40; trail <= 0xFE; trail++)
                if (trail is <= 0x7E or >= 0xA1 && (lead < 0xC6 || trail <= 0x7E))
                    AddIdeograph(set, big5.GetString([(byte)lead, (byte)trail]));
        return set;
    }

    private static void AddIdeograph(HashSet<char> set, string decoded)
    {
        if (decoded.Length == 1 && decoded[0] is >= '\u3400' and <= '\u9fff') set.Add(decoded[0]);
    }

    /// <summary>
    /// UTF-16 without a byte-order mark decodes almost any even-length bytes; it is a candidate only when the high
    /// bytes show the zeros of ASCII (delimiters, line breaks, digits) in at least one character of sixteen.
    /// </summary>
    private static bool LooksLikeUtf16(byte[] bytes, TextEncoding encoding)
    {
        if (bytes.Length < 2 || bytes.Length % 2 != 0) return false;
        int high = encoding == TextEncoding.Utf16LE ? 1 : 0, zeros = 0;
        for (int i = high; i < bytes.Length; i += 2)
            if (bytes[i] == 0) zeros++;
        return zeros * 16 >= bytes.Length / 2;
    }

    private static (TextEncoding Encoding, int Length)? BomLength(byte[] bytes) => bytes switch
    {
        [0xEF, 0xBB, 0xBF, ..] => (TextEncoding.Utf8Bom, 3),
        [0xFF, 0xFE, ..] => (TextEncoding.Utf16LE, 2),
        [0xFE, 0xFF, ..] => (TextEncoding.Utf16BE, 2),
        _ => null,
    };

    private static bool Compatible(TextEncoding bom, TextEncoding chosen) =>
        bom == chosen || (bom == TextEncoding.Utf8Bom && chosen == TextEncoding.Utf8);

    private static Encoding Create(TextEncoding encoding, bool strict)
    {
        var decoderFallback = strict ? DecoderFallback.ExceptionFallback : DecoderFallback.ReplacementFallback;
        return encoding switch
        {
            TextEncoding.Utf8 or TextEncoding.Utf8Bom => new UTF8Encoding(false, strict),
            TextEncoding.Utf16LE => new UnicodeEncoding(false, false, strict),
            TextEncoding.Utf16BE => new UnicodeEncoding(true, false, strict),
            TextEncoding.Big5 => Encoding.GetEncoding(950, EncoderFallback.ExceptionFallback, decoderFallback),
            TextEncoding.Gb18030 => Encoding.GetEncoding(54936, EncoderFallback.ExceptionFallback, decoderFallback),
            _ => throw new ArgumentOutOfRangeException(nameof(encoding), encoding, null),
        };
    }

    private static string? TryStrict(TextEncoding encoding, byte[] bytes, int offset, out DecoderFallbackException? error)
    {
        try
        {
            error = null;
            return Create(encoding, strict: true).GetString(bytes, offset, bytes.Length - offset);
        }
        catch (DecoderFallbackException e)
        {
            error = e;
            return null;
        }
    }

    private static void Strict(TextEncoding encoding, byte[] bytes, int offset)
    {
        if (TryStrict(encoding, bytes, offset, out var error) is null)
            throw new DataImportException(ImportErrorCode.UnknownEncoding,
                $"The file starts with a {encoding.DisplayName()} byte-order mark but contains bytes that are not {encoding.DisplayName()}.",
                $"byte {offset + error!.Index}", error);
    }
}
