namespace FineTune.Web.Features.Data;

/// <summary>
/// The tutorial's own Q&amp;A workbook (samples/tutorial-qa.xlsx at the repository's top, embedded in the app): the wizard
/// offers it as the example file, so a beginner can go through every step before writing a single row.
/// </summary>
public static class TutorialSample
{
    public const string FileName = "tutorial-qa.xlsx";
    private const string ResourceName = "FineTune.Web.samples.tutorial-qa.xlsx";

    public static byte[] Bytes()
    {
        using var stream = typeof(TutorialSample).Assembly.GetManifestResourceStream(ResourceName)
            ?? throw new InvalidOperationException($"The embedded resource {ResourceName} is missing from the build.");
        using var copy = new MemoryStream();
        stream.CopyTo(copy);
        return copy.ToArray();
    }
}
