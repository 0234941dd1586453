using System.Runtime.InteropServices;

namespace FineTune.Engine.Training;

/// <summary>
/// fsync for files and folders. A checkpoint is recorded (in trainer_state, the database, the log) only after its files
/// and the folder entries naming them are on the disk: after a power cut or kill -9 a renamed folder whose files were
/// still in the page cache can come back empty, and the record would then point at a broken checkpoint.
/// </summary>
public static partial class DurableFiles
{
    /// <summary>Flushes a written file's data to the disk (fsync on a fresh handle flushes the file, whoever wrote it).</summary>
    public static void SyncFile(string path)
    {
        using var stream = new FileStream(path, FileMode.Open, FileAccess.ReadWrite, FileShare.ReadWrite);
        stream.Flush(flushToDisk: true);
    }

    /// <summary>Every file directly in <paramref name="folder"/>, then the folder itself.</summary>
    public static void SyncFolder(string folder)
    {
        foreach (string file in Directory.EnumerateFiles(folder)) SyncFile(file);
        SyncDirectoryEntry(folder);
    }

    /// <summary>
    /// Flushes a folder's entries (files created, renamed or deleted in it). POSIX only; on Windows NTFS journals the
    /// metadata and a folder cannot be opened for flushing, so there is nothing to do.
    /// </summary>
    public static void SyncDirectoryEntry(string folder)
    {
        if (OperatingSystem.IsWindows()) return;
        int fd = Open(folder, 0 /* O_RDONLY */);
        if (fd < 0) throw new IOException($"Cannot open the folder '{folder}' to flush it (errno {Marshal.GetLastPInvokeError()}).");
        try
        {
            if (Fsync(fd) != 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                throw new IOException($"Cannot flush the folder '{folder}' to the disk (errno {errno}{(errno == 28 ? ", No space left on device" : "")}).", errno);
            }
        }
        finally
        {
            _ = Close(fd);
        }
    }

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "fsync", SetLastError = true)]
    private static partial int Fsync(int fd);

    [LibraryImport("libc", EntryPoint = "close", SetLastError = true)]
    private static partial int Close(int fd);
}
