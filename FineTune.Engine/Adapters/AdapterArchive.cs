using System.IO.Compression;

namespace FineTune.Engine.Adapters;

/// <summary>
/// Unpacks an adapter zip (the app's download, or a zip of a PEFT folder) with limits: regular files only (a symlink
/// entry was unpacked as a file), no entry outside the target folder, at most <see cref="Limits.MaxFiles"/> files and
/// <see cref="Limits.MaxBytes"/> bytes counted as they are written, not as the zip claims (a 1.1 MB zip unpacked 1 GB).
/// </summary>
public static class AdapterArchive
{
    /// <param name="MaxBytes">Uncompressed bytes in all. An adapter of a 14B model with every linear layer at r=64 is about 1 GB.</param>
    /// <param name="MaxFiles">Adapter, tokenizer, card, loss.csv, settings: a dozen files; a hundred leaves room.</param>
    public sealed record Limits(long MaxBytes = 4L << 30, int MaxFiles = 100);

    private const int UnixFileTypeMask = 0xF000; // S_IFMT
    private const int UnixRegularFile = 0x8000;  // S_IFREG
    private const int UnixDirectory = 0x4000;    // S_IFDIR

    /// <summary>Extracts <paramref name="zipPath"/> into the empty folder <paramref name="target"/>; on any refusal the folder is emptied again.</summary>
    public static void Extract(string zipPath, string target, Limits? limits = null)
    {
        limits ??= new Limits();
        string root = Path.TrimEndingDirectorySeparator(Path.GetFullPath(target)) + Path.DirectorySeparatorChar;
        try
        {
            using var archive = ZipFile.OpenRead(zipPath);
            if (archive.Entries.Count > limits.MaxFiles)
                throw new AdapterFormatException($"{zipPath} holds {archive.Entries.Count} entries; an adapter zip has at most {limits.MaxFiles}. Is it the right file?");
            long written = 0;
            var buffer = new byte[1 << 16];
            foreach (var entry in archive.Entries)
            {
                int unixMode = (entry.ExternalAttributes >> 16) & UnixFileTypeMask;
                bool isFolder = entry.FullName.EndsWith('/') || unixMode == UnixDirectory;
                if (unixMode != 0 && unixMode != UnixRegularFile && unixMode != UnixDirectory)
                    throw new AdapterFormatException($"{zipPath}: '{entry.FullName}' is a symbolic link or special file; an adapter zip holds plain files only.");
                string destination = Path.GetFullPath(Path.Combine(root, entry.FullName));
                if (!destination.StartsWith(root, StringComparison.Ordinal) && destination + Path.DirectorySeparatorChar != root)
                    throw new AdapterFormatException($"{zipPath}: '{entry.FullName}' would be written outside the folder it is unpacked into.");
                if (isFolder)
                {
                    Directory.CreateDirectory(destination);
                    continue;
                }
                Directory.CreateDirectory(Path.GetDirectoryName(destination)!);
                using var input = entry.Open();
                using var output = new FileStream(destination, FileMode.CreateNew, FileAccess.Write);
                int read;
                while ((read = input.Read(buffer, 0, buffer.Length)) > 0)
                {
                    written += read;
                    if (written > limits.MaxBytes)
                        throw new AdapterFormatException($"{zipPath} unpacks to more than {limits.MaxBytes / (1 << 20)} MB; an adapter is smaller. Is it the right file?");
                    output.Write(buffer, 0, read);
                }
            }
        }
        catch (InvalidDataException e)
        {
            Empty(target);
            throw new AdapterFormatException($"{zipPath} is not a readable zip file ({e.Message}).", e);
        }
        catch (AdapterFormatException)
        {
            Empty(target);
            throw;
        }
    }

    private static void Empty(string folder)
    {
        if (!Directory.Exists(folder)) return;
        foreach (string file in Directory.GetFiles(folder)) File.Delete(file);
        foreach (string sub in Directory.GetDirectories(folder)) Directory.Delete(sub, recursive: true);
    }
}
