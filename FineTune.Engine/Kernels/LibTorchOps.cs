using System.Runtime.InteropServices;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Kernels;

/// <summary>
/// Calls libtorch operators TorchSharp 0.107 does not wrap through their C++ entry point at::_ops::NAME::call (the
/// dispatcher's: autograd, the device's kernel, as torch.ops.aten.NAME in Python), found by its Itanium-mangled name in
/// the libtorch the backend loaded. What crosses the boundary, by the x86-64 System V and Itanium C++ ABIs:
/// <list type="bullet">
/// <item>const at::Tensor&amp;: TorchSharp's handle itself (an at::Tensor*).</item>
/// <item>const std::optional&lt;at::Tensor&gt;&amp;: the address of an <see cref="OptionalTensor"/> that borrows a handle's
/// TensorImpl (no reference taken; the callee copies what it keeps).</item>
/// <item>c10::SymInt and std::optional&lt;c10::SymInt&gt; by value: not trivially copyable, so passed as the address of a
/// temporary (a plain integer's SymInt is the integer).</item>
/// <item>std::optional&lt;double&gt; by value: trivially copyable, 16 bytes (<see cref="OptionalDouble"/>).</item>
/// <item>A returned at::Tensor or std::tuple of them: written to memory the caller passes first (sret); libstdc++ lays a
/// tuple's elements out last first. Each element owns one reference, which <see cref="Adopt"/> moves into a TorchSharp
/// tensor.</item>
/// </list>
/// A C++ exception thrown through such a call ends the process (.NET cannot unwind it), so callers check every
/// precondition the operator checks before calling. FineTune.Tests/Kernels/LibTorchOpsTests.cs checks the conventions on
/// CPU operators with the same kinds of arguments against TorchSharp's own wrappers.
/// </summary>
internal static unsafe class LibTorchOps
{
    /// <summary>std::optional&lt;at::Tensor&gt; (libstdc++): the TensorImpl pointer, then the engaged flag.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct OptionalTensor
    {
        public nint Impl;
        public byte Engaged;
    }

    /// <summary>std::optional&lt;double&gt;: the value, then the engaged flag.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct OptionalDouble
    {
        public double Value;
        public byte Engaged;

        public static OptionalDouble Of(double? value) => value is double v ? new() { Value = v, Engaged = 1 } : default;
    }

    /// <summary>std::optional&lt;c10::SymInt&gt;: the integer, then the engaged flag.</summary>
    [StructLayout(LayoutKind.Sequential)]
    internal struct OptionalSymInt
    {
        public long Value;
        public byte Engaged;

        public static OptionalSymInt Of(long? value) => value is long v ? new() { Value = v, Engaged = 1 } : default;
    }

    private static readonly Lock Gate = new();
    private static nint _libTorch;
    private static delegate* unmanaged<nuint, void*> _operatorNew; // ::operator new(size_t), which at::Tensor's delete pairs with

    /// <summary>The address of the exported function <paramref name="mangledName"/> in libtorch_cpu (the one the backend loaded), or 0 where this build lacks it or libtorch is not loaded.</summary>
    internal static nint Find(string mangledName)
    {
        lock (Gate)
        {
            if (_libTorch == 0 && !NativeLibrary.TryLoad("libtorch_cpu.so", out _libTorch)
                && !NativeLibrary.TryLoad("torch_cpu", typeof(torch).Assembly, null, out _libTorch))
                return 0;
            return NativeLibrary.TryGetExport(_libTorch, mangledName, out var address) ? address : 0;
        }
    }

    /// <summary>An optional tensor argument that borrows <paramref name="t"/> (or none).</summary>
    internal static OptionalTensor Borrow(Tensor? t) => t is null ? default : new() { Impl = *(nint*)t.Handle, Engaged = 1 };

    /// <summary>
    /// A TorchSharp tensor that takes over the reference an at::Tensor returned by value holds (<paramref name="impl"/>, its
    /// TensorImpl pointer): boxed in a heap at::Tensor, as TorchSharp's own results are, and deleted by its Dispose.
    /// </summary>
    internal static Tensor Adopt(nint impl)
    {
        lock (Gate)
        {
            if (_operatorNew == null)
            {
                var cxx = NativeLibrary.Load("libstdc++.so.6");
                _operatorNew = (delegate* unmanaged<nuint, void*>)NativeLibrary.GetExport(cxx, "_Znwm");
            }
        }
        var box = (nint*)_operatorNew((nuint)sizeof(nint));
        *box = impl;
        return Tensor.UnsafeCreateTensor((IntPtr)box);
    }

    /// <summary>The tensors of a returned std::tuple of <paramref name="count"/> at::Tensor, in the tuple's order (libstdc++ stores them last first).</summary>
    internal static Tensor[] AdoptTuple(nint* tuple, int count) => [.. Enumerable.Range(0, count).Select(i => Adopt(tuple[count - 1 - i]))];
}
