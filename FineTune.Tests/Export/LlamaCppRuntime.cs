using System.Runtime.InteropServices;
using FineTune.Tests.Support;

namespace FineTune.Tests.Export;

/// <summary>
/// llama.cpp's CPU backend (LLamaSharp.Backend.Cpu) links the GNU OpenMP runtime, libgomp.so.1, which a fresh Linux
/// with only the .NET SDK may lack (Ubuntu 24.04's minimal image, Debian's minbase). The tests that load a GGUF with
/// llama.cpp then skip with this reason instead of failing with a loader error, except in CI.
/// </summary>
public static class LlamaCppRuntime
{
    /// <summary>Why llama.cpp cannot load here and how to fix it; null when it can.</summary>
    public static string? Missing { get; } = Find();

    private static string? Find()
    {
        if (!OperatingSystem.IsLinux()) return null;
        if (NativeLibrary.TryLoad("libgomp.so.1", out var handle))
        {
            NativeLibrary.Free(handle);
            return null;
        }
        return "llama.cpp (LLamaSharp.Backend.Cpu) needs the GNU OpenMP runtime libgomp.so.1, which is not installed: "
            + "install it (Debian/Ubuntu: sudo apt-get install libgomp1) to run the GGUF tests.";
    }

    /// <summary>The skip reason for a llama.cpp test: null in CI (there a missing runtime must fail the test).</summary>
    public static string? SkipReason => ContinuousIntegration.Running ? null : Missing;
}

/// <summary>A test that loads a GGUF with llama.cpp: skipped with <see cref="LlamaCppRuntime.Missing"/> outside CI.</summary>
public sealed class LlamaCppFactAttribute : FactAttribute
{
    public LlamaCppFactAttribute()
    {
        if (LlamaCppRuntime.SkipReason is { } reason) Skip = reason;
    }
}

/// <summary>A theory that loads a GGUF with llama.cpp: skipped with <see cref="LlamaCppRuntime.Missing"/> outside CI.</summary>
public sealed class LlamaCppTheoryAttribute : TheoryAttribute
{
    public LlamaCppTheoryAttribute()
    {
        if (LlamaCppRuntime.SkipReason is { } reason) Skip = reason;
    }
}
