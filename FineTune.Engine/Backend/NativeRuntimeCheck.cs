using System.Text;

namespace FineTune.Engine.Backend;

/// <summary>
/// Tells, before TorchSharp is touched, whether its native library can load here, and words the failure as one line.
/// TorchSharp 0.107's libLibTorchSharp.so needs the GCC 13 C++ runtime (symbol version GLIBCXX_3.4.32); on an older
/// system (Debian 12, Ubuntu 22.04) loading it fails with a page of loader trace, copies libtorch next to the app and
/// aborts the process. Checking the C++ runtime this process already uses avoids all of that.
/// </summary>
public static class NativeRuntimeCheck
{
    public const string RequiredGlibcxx = "GLIBCXX_3.4.32";

    public const string WhatToDo =
        "Run the app through tools/debian13 (Debian 12), in the Docker image, or on Ubuntu 24.04+ / Debian 13+ (see README, Set up).";

    /// <summary>One line when the C++ runtime is too old for TorchSharp's native library; null when it is fine or unknown.</summary>
    public static string? Problem()
    {
        if (!OperatingSystem.IsLinux()) return null;
        string? libstdcxx = LoadedLibStdCxx() ?? FirstExisting(
            "/usr/lib/x86_64-linux-gnu/libstdc++.so.6", "/lib/x86_64-linux-gnu/libstdc++.so.6",
            "/usr/lib/aarch64-linux-gnu/libstdc++.so.6", "/usr/lib64/libstdc++.so.6");
        return libstdcxx is null ? null : ProblemWith(libstdcxx);
    }

    /// <summary>The one-line problem for a given libstdc++ file, or null when it has the symbol version TorchSharp needs.</summary>
    public static string? ProblemWith(string libstdcxxPath)
    {
        if (ContainsAscii(libstdcxxPath, RequiredGlibcxx)) return null;
        return $"Training is off: TorchSharp's native library needs the GCC 13 C++ runtime ({RequiredGlibcxx}), which this system's {libstdcxxPath} lacks. {WhatToDo}";
    }

    /// <summary>True for the exceptions TorchSharp and the runtime throw when a native library cannot be loaded.</summary>
    public static bool IsNativeLoadFailure(Exception e) => e switch
    {
        DllNotFoundException or BadImageFormatException or EntryPointNotFoundException => true,
        TypeInitializationException { InnerException: { } inner } => IsNativeLoadFailure(inner),
        NotSupportedException n => n.Message.Contains("native", StringComparison.OrdinalIgnoreCase),
        _ => false,
    };

    /// <summary>"Training is off: libtorch could not be loaded (first line of the error). What to do."</summary>
    public static string LoadFailureLine(Exception e)
    {
        Exception root = e is TypeInitializationException { InnerException: { } inner } ? inner : e;
        string first = root.Message.Split('\n', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).FirstOrDefault() ?? root.GetType().Name;
        if (first.Length > 300) first = first[..300] + "…";
        return $"Training is off: libtorch could not be loaded ({first}). {WhatToDo}";
    }

    /// <summary>The libstdc++ this process has mapped (the .NET host links it), read from /proc/self/maps.</summary>
    private static string? LoadedLibStdCxx()
    {
        try
        {
            foreach (string line in File.ReadLines("/proc/self/maps"))
            {
                int slash = line.IndexOf('/');
                if (slash >= 0 && line.Contains("libstdc++.so", StringComparison.Ordinal)) return line[slash..].Trim();
            }
        }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
        return null;
    }

    private static string? FirstExisting(params string[] paths) => paths.FirstOrDefault(File.Exists);

    /// <summary>Whether the file's bytes contain the ASCII text (symbol version names are stored as plain strings).</summary>
    private static bool ContainsAscii(string path, string text)
    {
        byte[] needle = Encoding.ASCII.GetBytes(text);
        byte[] buffer = new byte[1 << 20];
        using var stream = File.OpenRead(path);
        int carried = 0, read;
        while ((read = stream.Read(buffer, carried, buffer.Length - carried)) > 0)
        {
            int length = carried + read;
            if (buffer.AsSpan(0, length).IndexOf(needle) >= 0) return true;
            carried = Math.Min(needle.Length - 1, length);
            buffer.AsSpan(length - carried, carried).CopyTo(buffer);
        }
        return false;
    }
}
