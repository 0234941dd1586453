using FineTune.Engine.Backend;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Models;

/// <summary>Memory a device has for a model: the bytes, and where the number comes from (for the message).</summary>
public sealed record AvailableMemory(long Bytes, string Source);

/// <summary>
/// Refuses a model load that cannot fit before anything is allocated: the bytes the weights take in the load's dtype
/// (4-bit NF4 where quantized), counted from the model built on the meta device (<see cref="ModelFacts"/>), plus the
/// largest checkpoint tensor read and converted on the way, against what the device has. Without the check a load
/// too big for the machine ran until the allocator failed, or the kernel's OOM killer ended the whole app.
/// </summary>
public static class ModelMemoryCheck
{
    /// <summary>Bytes the load needs at its peak: the weights as loaded plus one tensor in flight (read as stored, converted, moved).</summary>
    public static long NeededBytes(ModelFacts facts, SafeTensorsCheckpoint checkpoint, ScalarType dtype, bool fourBit, bool doubleQuantization)
    {
        long largestStored = checkpoint.Entries.Select(e => e.Length).DefaultIfEmpty(0).Max();
        long largestElements = checkpoint.Entries.Select(e => e.Shape.Aggregate(1L, (n, d) => n * d)).DefaultIfEmpty(0).Max();
        return facts.WeightBytes(BytesPer(dtype), fourBit, doubleQuantization) + largestStored + largestElements * BytesPer(dtype);
    }

    private static int BytesPer(ScalarType dtype) => dtype switch
    {
        ScalarType.Float16 or ScalarType.BFloat16 => 2,
        ScalarType.Float64 => 8,
        _ => 4,
    };

    /// <summary>What <paramref name="device"/> has: the host's available memory (cgroup limit included) on the CPU; on CUDA the card's memory.</summary>
    /// <remarks>
    /// On CUDA the card's total memory, not NVML's free memory: libtorch keeps the blocks of a disposed model in its own
    /// cache, which the driver counts as used, so a second load in the same process would be refused for memory it has.
    /// </remarks>
    public static AvailableMemory? Available(Device device)
    {
        if (device.type == DeviceType.CUDA)
        {
            var gpu = ComputeBackend.Current.Gpus.FirstOrDefault(g => g.Index == Math.Max(device.index, 0));
            return gpu is null ? null : new AvailableMemory(gpu.MemoryBytes, $"{gpu.Name} has {Size(gpu.MemoryBytes)}");
        }
        return HostMemory.AvailableBytes() is { } bytes ? new AvailableMemory(bytes, $"{Size(bytes)} of RAM is available") : null;
    }

    /// <summary>Throws <see cref="ModelMemoryException"/> when the load cannot fit; unknown memory (not Linux, no GPU record) lets it go on.</summary>
    public static void Ensure(string folder, ModelFacts facts, SafeTensorsCheckpoint checkpoint, Device device, ScalarType dtype, ModelLoadOptions options)
    {
        var available = options.AvailableMemory is { } probe ? probe(device) : Available(device);
        if (available is null) return;
        long needed = NeededBytes(facts, checkpoint, dtype, options.FourBit, options.DoubleQuantization);
        if (needed <= available.Bytes) return;
        string weights = options.FourBit ? $"{dtype} with 4-bit (NF4) linear layers" : dtype.ToString();
        throw new ModelMemoryException(needed, available.Bytes,
            $"Not enough memory to load {Path.GetFileName(Path.TrimEndingDirectorySeparator(folder))}: its {Count(facts.TotalParameters)} parameters " +
            $"as {weights} need about {Size(needed)} on {device.type.ToString().ToLowerInvariant()}, and {available.Source}. " +
            (options.FourBit || device.type == DeviceType.CUDA
                ? "Choose a smaller model, or close what else uses the memory."
                : "Choose a smaller model, close what else uses the memory, or load it in 4-bit (QLoRA) on a GPU."));
    }

    private static string Size(long bytes) => bytes >= 1L << 30
        ? string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{bytes / (double)(1L << 30):0.0} GB")
        : string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{Math.Ceiling(bytes / (double)(1L << 20)):0} MB");

    private static string Count(long parameters) => parameters >= 1_000_000_000
        ? string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{parameters / 1e9:0.##}B")
        : string.Create(System.Globalization.CultureInfo.InvariantCulture, $"{parameters / 1e6:0.##}M");
}
