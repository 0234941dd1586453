using FineTune.Engine.Models;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Kernels;

/// <summary>
/// Causal attention through libtorch's FlashAttention-2 operator (aten::_flash_attention_forward, the kernel
/// F.scaled_dot_product_attention picks for causal 16-bit attention, and the one HF's flash_attention_2 path calls through
/// flash_attn_varlen_func for packed rows), called by its C++ entry point (<see cref="LibTorchOps"/>); TorchSharp 0.107
/// reaches only scaled_dot_product_attention. What that gives:
/// <list type="bullet">
/// <item>Packed rows (several sequences in one row) by their starts (cu_seqlens): each sequence attends causally within
/// itself, as the block-diagonal mask does, but without the (T, T) mask, whose kernel (the memory-efficient one) computes
/// every query-key block of the packed row and keeps the mask per layer for backward.</item>
/// <item>Grouped-query attention without repeating keys and values for every query head: the kernel reads each kv head
/// for its group, and backward keeps k and v (B, nKV, T, hD) instead of the repeated (B, nH, T, hD).</item>
/// </list>
/// The operator has an autograd formula (aten::_flash_attention_backward), so gradients flow as through SDPA. Used on
/// CUDA GPUs of compute capability 8.0 to 12.x (libtorch's flash kernels) for fp16/bf16, head dims up to 256 in steps of
/// 8; elsewhere the caller's SDPA path. Off where libtorch lacks the symbol or FINETUNE_FLASH_ATTENTION=off.
/// </summary>
public static unsafe class FlashAttention
{
    public const string SwitchVariable = "FINETUNE_FLASH_ATTENTION";

    /// <summary>at::_ops::_flash_attention_forward::call(q, k, v, cum_seq_q, cum_seq_k, max_q, max_k, dropout_p, is_causal,
    /// return_debug_mask, scale, window_size_left, window_size_right, seqused_k, alibi_slopes) -> (output, logsumexp,
    /// rng_state, unused, debug_attn_mask), libtorch 2.5 and later.</summary>
    private const string ForwardSymbol =
        "_ZN2at4_ops24_flash_attention_forward4callERKNS_6TensorES4_S4_RKSt8optionalIS2_ES8_N3c106SymIntESA_dbbS5_IdES5_ISA_ESC_S8_S8_";

    private static readonly Lock Gate = new();
    private static bool _bound;
    private static string _status = "off: not on a CUDA backend";
    private static delegate* unmanaged<nint*, nint, nint, nint, LibTorchOps.OptionalTensor*, LibTorchOps.OptionalTensor*, long*, long*,
        double, byte, byte, LibTorchOps.OptionalDouble, LibTorchOps.OptionalSymInt*, LibTorchOps.OptionalSymInt*,
        LibTorchOps.OptionalTensor*, LibTorchOps.OptionalTensor*, nint*> _forward;
    private static readonly Dictionary<int, bool> CapableGpus = [];

    /// <summary>True where libtorch's operator was found and not switched off.</summary>
    public static bool Enabled { get; private set; }

    /// <summary>For tests and measurements: the SDPA path even where flash attention is on (process-wide).</summary>
    public static bool Suspended { get; set; }

    /// <summary>One line for /healthz and the benchmark: "on: ..." or "off: why".</summary>
    public static string Status => _status;

    /// <summary>Binds the operator; called by the backend once libtorch with CUDA is loaded.</summary>
    internal static string Start()
    {
        lock (Gate)
        {
            if (_bound) return _status;
            _bound = true;
            string? off = Environment.GetEnvironmentVariable(SwitchVariable);
            if (string.Equals(off, "off", StringComparison.OrdinalIgnoreCase) || off == "0") return _status = $"off: {SwitchVariable}={off}";
            nint forward = LibTorchOps.Find(ForwardSymbol);
            if (forward == 0) return _status = "off: this libtorch has no aten::_flash_attention_forward of the 2.5+ signature";
            _forward = (delegate* unmanaged<nint*, nint, nint, nint, LibTorchOps.OptionalTensor*, LibTorchOps.OptionalTensor*, long*, long*,
                double, byte, byte, LibTorchOps.OptionalDouble, LibTorchOps.OptionalSymInt*, LibTorchOps.OptionalSymInt*,
                LibTorchOps.OptionalTensor*, LibTorchOps.OptionalTensor*, nint*>)forward;
            Enabled = true;
            return _status = "on: libtorch's aten::_flash_attention_forward (sm_80 and newer, fp16/bf16)";
        }
    }

    /// <summary>
    /// True when queries of this device, dtype and head dim go through flash attention: the checks libtorch's flash
    /// kernels make (a failed check there would throw through the call), made here first.
    /// </summary>
    public static bool Handles(Device device, ScalarType dtype, long headDim) =>
        Enabled && !Suspended && device.type == DeviceType.CUDA && dtype is ScalarType.BFloat16 or ScalarType.Float16
        && headDim % 8 == 0 && headDim is > 0 and <= 256 && CapableGpu(Math.Max(0, (int)device.index));

    private static bool CapableGpu(int ordinal)
    {
        lock (Gate)
        {
            if (!CapableGpus.TryGetValue(ordinal, out bool capable))
            {
                int? major = Backend.CudaDriver.DescribeDevice(ordinal).Major;
                CapableGpus[ordinal] = capable = major is >= 8 and <= 12; // libtorch's flash kernels: sm_80 to sm_12x
            }
            return capable;
        }
    }

    /// <summary>
    /// Causal attention for q (B, nH, T, hD), k and v (B, nKV, T, hD), nH a multiple of nKV; returns (B, T, nH·hD).
    /// With <paramref name="packed"/> (B = 1), each of its sequences attends within itself only. The caller checked
    /// <see cref="Handles"/>.
    /// </summary>
    public static Tensor Causal(Tensor q, Tensor k, Tensor v, PackedSequences? packed)
    {
        var (b, nH, t, d) = (q.shape[0], q.shape[1], q.shape[2], q.shape[3]);
        long nKv = k.shape[1];
        if (nKv == 0 || nH % nKv != 0 || k.shape[2] != t || v.shape[1] != nKv || k.dtype != q.dtype || v.dtype != q.dtype
            || k.shape[3] != d || v.shape[3] != d || !CudaKernels.SameDevice(k, q) || !CudaKernels.SameDevice(v, q) || t == 0 || b == 0)
            throw new ArgumentException($"Flash attention takes q (B, nH, T, hD) and k, v (B, nKV, T, hD) of one dtype and device; they are [{string.Join(", ", q.shape)}], [{string.Join(", ", k.shape)}], [{string.Join(", ", v.shape)}].");
        if (packed is not null && (b != 1 || packed.Starts.dtype != ScalarType.Int32 || !CudaKernels.SameDevice(packed.Starts, q) || !packed.Starts.is_contiguous()
            || packed.Longest < 1 || packed.Longest > t))
            throw new ArgumentException("Packed sequences need one row (B = 1) and their starts as a contiguous int32 tensor on the queries' device.");

        using var scope = NewDisposeScope();
        // The kernel's layout is (B, T, heads, hD), or (total, heads, hD) for packed rows; the last dim must be dense.
        var qt = Dense(q.transpose(1, 2));                                                     // (B, T, nH, hD)
        var kt = Dense(k.transpose(1, 2));                                                     // (B, T, nKV, hD)
        var vt = Dense(v.transpose(1, 2));                                                     // (B, T, nKV, hD)
        if (packed is not null)
        {
            qt = qt.squeeze(0);                                                                // (T, nH, hD)
            kt = kt.squeeze(0);                                                                // (T, nKV, hD)
            vt = vt.squeeze(0);                                                                // (T, nKV, hD)
        }
        var starts = LibTorchOps.Borrow(packed?.Starts);
        long longest = packed?.Longest ?? t;
        long maxQ = longest, maxK = longest;
        LibTorchOps.OptionalSymInt noWindow = default;
        LibTorchOps.OptionalTensor none = default;
        nint* result = stackalloc nint[5];
        _forward(result, qt.Handle, kt.Handle, vt.Handle, &starts, &starts, &maxQ, &maxK, 0.0, 1, 0,
            LibTorchOps.OptionalDouble.Of(null), &noWindow, &noWindow, &none, &none);
        GC.KeepAlive(packed);
        var outputs = LibTorchOps.AdoptTuple(result, 5);                                       // output, logsumexp, rng_state, unused, debug mask
        for (int i = 1; i < outputs.Length; i++) outputs[i].Dispose();                           // the node keeps what backward needs
        var y = outputs[0].reshape(b, t, nH * d);                                              // (B, T, nH·hD): (B, T, nH, hD) is dense
        outputs[0].Dispose();
        return scope.MoveToOuter(y);
    }

    private static Tensor Dense(Tensor x) => x.stride(-1) == 1 ? x : x.contiguous();
}
