using System.Diagnostics;

namespace FineTune.Tests.Support;

/// <summary>
/// A small tmpfs mounted for one test: a disk that really fills up ("No space left on device", SQLite "database or
/// disk is full"), for the disk-full cases. Needs root (CI containers and tools/debian13 run as root).
/// </summary>
public sealed class TinyDisk : IDisposable
{
    public string Folder { get; }

    public TinyDisk(long bytes)
    {
        Folder = Directory.CreateTempSubdirectory("finetune-tinydisk-").FullName;
        Run("mount", "-t", "tmpfs", "-o", $"size={bytes}", "tmpfs", Folder);
    }

    /// <summary>Fills the disk to the last byte with one file (delete it to free the space again).</summary>
    public string Fill()
    {
        string path = Path.Combine(Folder, "filler.bin");
        var block = new byte[4096];
        using var handle = File.OpenHandle(path, FileMode.Create, FileAccess.Write);
        long offset = 0;
        int size = block.Length;
        while (size > 0)
        {
            try
            {
                RandomAccess.Write(handle, block.AsSpan(0, size), offset);
                offset += size;
            }
            catch (IOException)
            {
                size /= 2; // full at this size: try smaller writes, to the last byte
            }
        }
        return path;
    }

    public void Dispose()
    {
        Run("umount", "-l", Folder);
        Directory.Delete(Folder);
    }

    private static void Run(string file, params string[] args)
    {
        using var process = Process.Start(new ProcessStartInfo(file, args) { RedirectStandardError = true })!;
        string error = process.StandardError.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0) throw new InvalidOperationException($"{file} {string.Join(' ', args)} failed: {error}");
    }

    public static bool CanMount => Environment.UserName == "root" && OperatingSystem.IsLinux();
}

/// <summary>A fact that needs <see cref="TinyDisk"/> (root on Linux); skipped elsewhere.</summary>
public sealed class TinyDiskFactAttribute : FactAttribute
{
    public TinyDiskFactAttribute()
    {
        if (!TinyDisk.CanMount) Skip = "mounting a tmpfs needs root on Linux";
    }
}
