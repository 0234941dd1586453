using System.Runtime.InteropServices;

namespace FineTune.Engine.Backend;

/// <summary>The machine's memory as this process may use it: what is available now, and giving freed native memory back.</summary>
public static partial class HostMemory
{
    /// <summary>
    /// Bytes this process could still allocate without swapping or being killed: the kernel's MemAvailable
    /// (/proc/meminfo), lowered to the room left under the process's cgroup limit (v2 memory.max − memory.current, or
    /// v1 limit − usage) where one is set, as in a container. Null where neither can be read (not Linux).
    /// </summary>
    public static long? AvailableBytes() => AvailableBytes("/proc/meminfo", CgroupFolder());

    internal static long? AvailableBytes(string meminfo, string? cgroup)
    {
        long? available = null;
        try
        {
            foreach (string line in File.ReadLines(meminfo))
                if (line.StartsWith("MemAvailable:", StringComparison.Ordinal))
                    available = long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1]) * 1024;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
        }
        if (cgroup is not null && CgroupRoom(cgroup) is { } room)
            available = available is { } a ? Math.Min(a, room) : room;
        return available;
    }

    /// <summary>Room under the cgroup's limit, or null when it has none (or it cannot be read).</summary>
    private static long? CgroupRoom(string folder)
    {
        var (limitFile, usageFile) = File.Exists(Path.Combine(folder, "memory.max"))
            ? ("memory.max", "memory.current")
            : ("memory.limit_in_bytes", "memory.usage_in_bytes");
        try
        {
            string limit = File.ReadAllText(Path.Combine(folder, limitFile)).Trim();
            // "max" (v2) or a huge page-rounded number (v1's "unlimited") mean no limit.
            if (limit == "max" || !long.TryParse(limit, out long limitBytes) || limitBytes >= long.MaxValue / 2) return null;
            long usage = long.Parse(File.ReadAllText(Path.Combine(folder, usageFile)).Trim());
            return Math.Max(0, limitBytes - usage);
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or FormatException)
        {
            return null;
        }
    }

    /// <summary>This process's memory cgroup folder (v2 unified "0::/path", or v1's "memory" controller), if mounted.</summary>
    private static string? CgroupFolder()
    {
        try
        {
            foreach (string line in File.ReadLines("/proc/self/cgroup"))
            {
                string[] parts = line.Split(':', 3);
                if (parts.Length != 3) continue;
                string? folder = parts[0] == "0" && parts[1].Length == 0 ? Path.Combine("/sys/fs/cgroup", parts[2].TrimStart('/'))
                    : parts[1].Split(',').Contains("memory") ? Path.Combine("/sys/fs/cgroup/memory", parts[2].TrimStart('/'))
                    : null;
                if (folder is not null && Directory.Exists(folder)) return folder;
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
        return null;
    }

    /// <summary>
    /// Resident bytes of a process (VmRSS of /proc/&lt;pid&gt;/status; this process when <paramref name="processId"/> is
    /// null): what memory tests and the bench's memory probes read. Linux only.
    /// </summary>
    public static long ResidentBytes(int? processId = null)
    {
        foreach (string line in File.ReadLines($"/proc/{(processId is { } id ? id.ToString(System.Globalization.CultureInfo.InvariantCulture) : "self")}/status"))
            if (line.StartsWith("VmRSS:", StringComparison.Ordinal))
                return long.Parse(line.Split(' ', StringSplitOptions.RemoveEmptyEntries)[1], System.Globalization.CultureInfo.InvariantCulture) * 1024;
        throw new InvalidOperationException("No VmRSS line in /proc/<pid>/status.");
    }

    /// <summary>
    /// Returns free pages of glibc's heap to the system (malloc_trim). glibc keeps freed blocks in per-thread arenas
    /// (an upload's native buffers, SQLite's copy of a blob, a failed load's tensors); other C libraries lack the call.
    /// </summary>
    public static void TrimNativeHeap()
    {
        if (!OperatingSystem.IsLinux()) return;
        try
        {
            MallocTrim(0);
        }
        catch (Exception e) when (e is EntryPointNotFoundException or DllNotFoundException)
        {
        }
    }

    [LibraryImport("libc", EntryPoint = "malloc_trim")]
    private static partial int MallocTrim(nuint pad);
}
