using FineTune.Engine.Backend;

namespace FineTune.Tests.Backend;

public sealed class HostMemoryTests : IDisposable
{
    private readonly string _folder = Directory.CreateTempSubdirectory("ft-hostmem-").FullName;

    public void Dispose() => Directory.Delete(_folder, recursive: true);

    private string Meminfo(long availableKb)
    {
        string path = Path.Combine(_folder, "meminfo");
        File.WriteAllText(path, $"MemTotal:       32000000 kB\nMemFree:         1000000 kB\nMemAvailable:   {availableKb} kB\nBuffers:          100 kB\n");
        return path;
    }

    private string Cgroup(string name, params (string File, string Text)[] files)
    {
        string folder = Path.Combine(_folder, name);
        Directory.CreateDirectory(folder);
        foreach (var (file, text) in files) File.WriteAllText(Path.Combine(folder, file), text);
        return folder;
    }

    [Fact]
    public void MemAvailable_is_what_the_host_has_without_a_cgroup_limit()
    {
        Assert.Equal(8_000_000L * 1024, HostMemory.AvailableBytes(Meminfo(8_000_000), null));
        Assert.Equal(8_000_000L * 1024, HostMemory.AvailableBytes(Meminfo(8_000_000), Cgroup("v2max", ("memory.max", "max\n"), ("memory.current", "123\n"))));
    }

    [Fact]
    public void A_container_limit_lowers_it_to_the_room_left_under_the_limit()
    {
        // cgroup v2: 4 GiB limit, 3 GiB used → 1 GiB, though the host has 8 GB available.
        var v2 = Cgroup("v2", ("memory.max", $"{4L << 30}\n"), ("memory.current", $"{3L << 30}\n"));
        Assert.Equal(1L << 30, HostMemory.AvailableBytes(Meminfo(8_000_000), v2));
        // cgroup v1: the same with its file names; "unlimited" is a huge number.
        var v1 = Cgroup("v1", ("memory.limit_in_bytes", $"{2L << 30}\n"), ("memory.usage_in_bytes", $"{1L << 29}\n"));
        Assert.Equal((2L << 30) - (1L << 29), HostMemory.AvailableBytes(Meminfo(8_000_000), v1));
        var unlimited = Cgroup("v1-unlimited", ("memory.limit_in_bytes", "9223372036854771712\n"), ("memory.usage_in_bytes", "5\n"));
        Assert.Equal(8_000_000L * 1024, HostMemory.AvailableBytes(Meminfo(8_000_000), unlimited));
    }

    [Fact]
    public void This_machine_reports_a_plausible_number()
    {
        long? available = HostMemory.AvailableBytes();
        Assert.NotNull(available); // Linux
        Assert.InRange(available!.Value, 1L << 20, 1L << 50);
    }
}

/// <summary>Runs alone: resident memory is a whole-process number, and a test running beside it freed memory while it
/// measured (CI at 85ce5d0: 22 MB grown for 64 MiB touched).</summary>
[CollectionDefinition(nameof(ResidentMemoryTests), DisableParallelization = true)]
public sealed class ResidentMemoryCollection;

[Collection(nameof(ResidentMemoryTests))]
public sealed class ResidentMemoryTests
{
    [Fact]
    public void Resident_memory_grows_with_touched_memory_and_reads_the_same_by_process_id()
    {
        long before = HostMemory.ResidentBytes();
        var block = new byte[64 << 20];
        for (int i = 0; i < block.Length; i += 4096) block[i] = 1; // touch every page
        long after = HostMemory.ResidentBytes(Environment.ProcessId);
        Assert.InRange(after - before, 48L << 20, 1L << 32);
        GC.KeepAlive(block);
    }
}
