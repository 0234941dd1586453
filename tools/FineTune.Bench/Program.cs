using System.Diagnostics;
using System.Text.Json;
using FineTune.Bench;
using FineTune.Engine.Backend;
using static TorchSharp.torch;

// FineTune.Bench COMMAND [options]: measurements for the GPU machine (see tools/bench/README.md).
// Each command prints one JSON line (and may write a JSON file with --out).
var backend = ComputeBackend.Initialize();
string command = args.Length > 0 ? args[0] : "backend";
try
{
    switch (command)
    {
        case "backend":
            Console.WriteLine(JsonSerializer.Serialize(new
            {
                device = backend.IsCuda ? "cuda" : "cpu",
                backend.Description,
                backend.Reason,
                backend.SupportsBFloat16,
                backend.Kernels,
                matmulTflops = MatmulTflops(backend),
            }));
            return 0;
        case "parity":
            return ParityCommand.Run(args[1..], backend);
        case "train":
            return TrainBenchCommand.Run(args[1..], backend);
        case "generate":
            return GenerateBenchCommand.Run(args[1..], backend);
        case "peft-parity":
            return PeftParityCommand.Run(args[1..], backend);
        case "profile":
            return ProfileCommand.Run(args[1..], backend);
        case "kernels":
            return KernelsCommand.Run(args[1..], backend);
        case "dp-abort":
            return DataParallelAbortCommand.Run(args[1..], backend);
        case "dp-check":
            return DataParallelCheckCommand.Run(args[1..], backend);
        case "host-calls":
            return ProfileCommand.HostCalls(backend);
        case "lora-check":
            return LoraCheckCommand.Run(args[1..], backend);
        case "graph-check":
            return GraphCheckCommand.Run(args[1..], backend);
        case "flash-check":
            return FlashCheckCommand.Run(args[1..], backend);
        case "saved-memory":
            return SavedMemoryCommand.Run(args[1..], backend);
        case "optim":
            return OptimizerBenchCommand.Run(args[1..], backend);
        default:
            Console.Error.WriteLine($"Unknown command '{command}'. Commands: backend, parity FIXTURES_DIR, train --model DIR --workload qa|dense ..., generate --model DIR [--new-tokens 256], optim [--layers 24 --steps 100].");
            return 2;
    }
}
catch (ArgumentException e)
{
    Console.Error.WriteLine(e.Message);
    return 2;
}

// Sustained bf16 (GPU) or fp32 (CPU) matmul throughput: a sanity check that the libtorch in use is the fast one.
static double MatmulTflops(BackendInfo backend)
{
    int n = backend.IsCuda ? 8192 : 512;
    var dtype = backend.IsCuda ? ScalarType.BFloat16 : ScalarType.Float32;
    using var scope = NewDisposeScope();
    var a = randn(n, n, dtype: dtype, device: backend.Device);
    var b = randn(n, n, dtype: dtype, device: backend.Device);
    a.matmul(b);
    if (backend.IsCuda) cuda.synchronize();
    int repeats = backend.IsCuda ? 50 : 5;
    var watch = Stopwatch.StartNew();
    for (int i = 0; i < repeats; i++) a.matmul(b).Dispose();
    if (backend.IsCuda) cuda.synchronize();
    return 2.0 * n * n * n * repeats / watch.Elapsed.TotalSeconds / 1e12;
}
