using FineTune.Engine.Backend;
using FineTune.Tests.Support;
using FineTune.Tests.Training;
using TorchSharp;
using Xunit.Abstractions;
using static TorchSharp.torch;

namespace FineTune.Tests.Backend;

/// <summary>Which GPU's memory a run's progress reports: the one its device names, found in NVML by PCI bus id.</summary>
public class GpuMemoryTests(ITestOutputHelper output)
{
    private const long GiB = 1L << 30;

    /// <summary>A machine's cards as NVML lists them (PCI order), and the ones CUDA sees, in CUDA's order.</summary>
    private sealed class FakeGpus(string[] nvmlBusIds, long[] usedBytes, string[] cudaBusIds) : IGpuQueries
    {
        public long[] Used { get; } = usedBytes;
        public List<string> HandleLookups { get; } = [];
        public int MemoryReads { get; private set; }

        public int CudaDeviceCount() => cudaBusIds.Length;

        public string? PciBusId(int cudaOrdinal) => cudaBusIds[cudaOrdinal];

        public nint? NvmlDevice(string pciBusId)
        {
            HandleLookups.Add(pciBusId);
            int index = Array.IndexOf(nvmlBusIds, pciBusId);
            return index < 0 ? null : 100 + index;
        }

        public long? UsedBytes(nint nvmlDevice)
        {
            MemoryReads++;
            return Used[nvmlDevice - 100];
        }
    }

    [Fact]
    public void Each_cuda_device_reads_its_own_gpu()
    {
        var gpus = new FakeGpus(["0000:17:00.0", "0000:65:00.0"], [1 * GiB, 7 * GiB], ["0000:17:00.0", "0000:65:00.0"]);
        var reader = new GpuMemoryReader(gpus);

        Assert.Equal(7 * GiB, reader.UsedBytes(new Device(DeviceType.CUDA, 1)));
        Assert.Equal(1 * GiB, reader.UsedBytes(new Device(DeviceType.CUDA, 0)));
        Assert.Equal(1 * GiB, reader.UsedBytes(new Device(DeviceType.CUDA))); // index-less "cuda": libtorch's GPU 0
    }

    [Fact]
    public void A_cuda_ordinal_is_found_by_pci_bus_id_not_by_nvml_index()
    {
        // CUDA_VISIBLE_DEVICES=3,1 on a four-GPU machine: cuda:0 is NVML's GPU 3, cuda:1 its GPU 1.
        string[] machine = ["0000:17:00.0", "0000:3B:00.0", "0000:65:00.0", "0000:B1:00.0"];
        var gpus = new FakeGpus(machine, [10 * GiB, 11 * GiB, 12 * GiB, 13 * GiB], [machine[3], machine[1]]);
        var reader = new GpuMemoryReader(gpus);

        Assert.Equal(13 * GiB, reader.UsedBytes(new Device(DeviceType.CUDA, 0)));
        Assert.Equal(11 * GiB, reader.UsedBytes(new Device(DeviceType.CUDA, 1)));
        Assert.Null(reader.UsedBytes(new Device(DeviceType.CUDA, 2))); // CUDA sees two GPUs
    }

    [Fact]
    public void The_card_is_looked_up_once_and_its_memory_read_every_time()
    {
        var gpus = new FakeGpus(["0000:17:00.0", "0000:65:00.0"], [1 * GiB, 2 * GiB], ["0000:17:00.0", "0000:65:00.0"]);
        var reader = new GpuMemoryReader(gpus);
        var device = new Device(DeviceType.CUDA, 1);

        Assert.Equal(2 * GiB, reader.UsedBytes(device));
        gpus.Used[1] = 5 * GiB;
        Assert.Equal(5 * GiB, reader.UsedBytes(device));
        Assert.Equal(["0000:65:00.0"], gpus.HandleLookups);
        Assert.Equal(2, gpus.MemoryReads);
    }

    [Fact]
    public void A_gpu_nvml_does_not_know_reads_nothing_and_is_not_looked_up_again()
    {
        var gpus = new FakeGpus(["0000:17:00.0"], [1 * GiB], ["0000:17:00.0", "0000:CA:00.0"]);
        var reader = new GpuMemoryReader(gpus);
        var device = new Device(DeviceType.CUDA, 1);

        Assert.Null(reader.UsedBytes(device));
        Assert.Null(reader.UsedBytes(device));
        Assert.Equal(["0000:CA:00.0"], gpus.HandleLookups);
        Assert.Equal(1 * GiB, reader.UsedBytes(new Device(DeviceType.CUDA, 0))); // the other GPU is unaffected
    }

    [Fact]
    public void The_cpu_has_no_gpu_memory_and_asks_no_driver()
    {
        var gpus = new FakeGpus(["0000:17:00.0"], [1 * GiB], ["0000:17:00.0"]);

        Assert.Null(new GpuMemoryReader(gpus).UsedBytes(CPU));
        Assert.Empty(gpus.HandleLookups);
        Assert.Equal(0, gpus.MemoryReads);
        Assert.Null(GpuMemory.UsedBytes(CPU));
    }

    [GpuFact]
    [Trait(Category.Name, Category.Gpu)]
    public void Memory_allocated_on_a_gpu_shows_on_that_gpu_alone()
    {
        var backend = ComputeBackend.Current;
        if (!backend.IsCuda)
        {
            output.WriteLine($"not a CUDA backend ({backend.Description})");
            return;
        }
        foreach (var gpu in backend.Gpus)
        {
            var device = gpu.Device;
            using var warm = ones(1, device: device); // the GPU's context exists before the first reading
            cuda.synchronize(device);
            long before = GpuMemory.UsedBytes(device) ?? throw new Xunit.Sdk.XunitException($"{device}: NVML gave no reading");
            var others = backend.Gpus.Where(g => g.Index != gpu.Index).Select(g => (g.Device, Used: GpuMemory.UsedBytes(g.Device)!.Value)).ToList();
            // libtorch's caching allocator may serve the first blocks from memory earlier tests freed without giving it
            // back to the driver: allocate 1 GiB blocks until the driver hands out more, within the GPU's free memory.
            var blocks = new List<Tensor>();
            try
            {
                long after = before;
                while (after - before < GiB && blocks.Count < (gpu.MemoryBytes - before) / GiB - 1)
                {
                    blocks.Add(empty(GiB, ScalarType.Byte, device: device));
                    cuda.synchronize(device);
                    after = GpuMemory.UsedBytes(device)!.Value;
                }
                output.WriteLine($"{device} ({gpu.Name}): {before / 1e9:0.000} GB → {after / 1e9:0.000} GB after {blocks.Count} GiB allocated");
                Assert.True(after - before >= GiB, $"{device}: the reading rose by {(after - before) / 1e9:0.000} GB with {blocks.Count} GiB allocated");
                foreach (var (other, used) in others)
                    Assert.InRange(GpuMemory.UsedBytes(other)!.Value - used, -GiB / 2, GiB / 2);
            }
            finally
            {
                foreach (var block in blocks) block.Dispose();
            }
        }
    }
}
