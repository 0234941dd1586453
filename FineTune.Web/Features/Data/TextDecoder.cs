using System.Text;

namespace FineTune.Web.Features.Data;

/// <summary>
/// Turns the bytes of a text file into a string, detecting the encoding the way Excel users produce it:
/// a byte-order mark (UTF-8, UTF-16 LE/BE) wins; else strict UTF-8; else Big5 (Excel's "CSV" on a
/// Traditional Chinese Windows). Anything that is none of those is refused with the byte offset,
/// rather than imported as mojibake.
/// </summary>
public static class TextDecoder
{
    static TextDecoder() => Encoding.RegisterProvider(CodePagesEncodingProvider.Instance);

    public static (string Text, string EncodingName) Decode(byte[] bytes)
    {
        if (bytes.Length >= 3 && bytes[0] == 0xEF && bytes[1] == 0xBB && bytes[2] == 0xBF)
            return (Strict(new UTF8Encoding(false, true), bytes, 3, "UTF-8 BOM"), "UTF-8 BOM");
        if (bytes.Length >= 2 && bytes[0] == 0xFF && bytes[1] == 0xFE)
            return (Strict(new UnicodeEncoding(false, false, true), bytes, 2, "UTF-16 LE"), "UTF-16 LE");
        if (bytes.Length >= 2 && bytes[0] == 0xFE && bytes[1] == 0xFF)
            return (Strict(new UnicodeEncoding(true, false, true), bytes, 2, "UTF-16 BE"), "UTF-16 BE");

        var utf8 = new UTF8Encoding(false, true);
        try
        {
            return (utf8.GetString(bytes), "UTF-8");
        }
        catch (DecoderFallbackException)
        {
            // Not UTF-8: the usual alternative for Traditional Chinese files is Big5 (code page 950).
        }

        var big5 = Encoding.GetEncoding(950, EncoderFallback.ExceptionFallback, DecoderFallback.ExceptionFallback);
        try
        {
            return (big5.GetString(bytes), "Big5");
        }
        catch (DecoderFallbackException e)
        {
            throw new DataImportException(ImportErrorCode.UnknownEncoding,
                "The text is neither UTF-8, UTF-16 (with BOM) nor Big5. Save it as \"CSV UTF-8\" in Excel and upload again.",
                $"byte {e.Index}", e);
        }
    }

    private static string Strict(Encoding encoding, byte[] bytes, int offset, string name)
    {
        try
        {
            return encoding.GetString(bytes, offset, bytes.Length - offset);
        }
        catch (DecoderFallbackException e)
        {
            throw new DataImportException(ImportErrorCode.UnknownEncoding,
                $"The file starts with a {name} byte-order mark but contains bytes that are not {name}.",
                $"byte {offset + e.Index}", e);
        }
    }
}
