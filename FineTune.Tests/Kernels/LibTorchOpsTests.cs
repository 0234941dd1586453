using FineTune.Engine.Kernels;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Tests.Kernels;

/// <summary>
/// The calling conventions <see cref="LibTorchOps"/> uses for libtorch's C++ operator entry points (what
/// <see cref="FlashAttention"/> passes to aten::_flash_attention_forward on a GPU), checked on CPU operators that take
/// the same kinds of arguments in the same places: tensors by reference, an optional tensor by reference, a double in a
/// vector register, a bool, and an optional double after the integer registers are spent (so on the stack), a returned
/// tuple of tensors; SymInt and optional SymInt by value. Each result is compared with TorchSharp's own wrapper or with
/// the math.
/// </summary>
public unsafe class LibTorchOpsTests
{
    // at::_ops::_scaled_dot_product_flash_attention_for_cpu::call(q, k, v, dropout_p, is_causal, attn_mask, scale) -> (output, logsumexp)
    private const string CpuFlashSymbol = "_ZN2at4_ops43_scaled_dot_product_flash_attention_for_cpu4callERKNS_6TensorES4_S4_dbRKSt8optionalIS2_ES5_IdE";
    // at::_ops::slice_Tensor::call(self, dim, start, end, step)
    private const string SliceSymbol = "_ZN2at4_ops12slice_Tensor4callERKNS_6TensorElSt8optionalIN3c106SymIntEES8_S7_";
    // at::_ops::narrow::call(self, dim, start, length)
    private const string NarrowSymbol = "_ZN2at4_ops6narrow4callERKNS_6TensorElN3c106SymIntES6_";

    private static (Tensor Output, Tensor LogSumExp) CpuFlash(Tensor q, Tensor k, Tensor v, bool causal, Tensor? mask, double? scale)
    {
        nint address = LibTorchOps.Find(CpuFlashSymbol);
        Assert.NotEqual(0, address);
        var call = (delegate* unmanaged<nint*, nint, nint, nint, double, byte, LibTorchOps.OptionalTensor*, LibTorchOps.OptionalDouble, nint*>)address;
        var optionalMask = LibTorchOps.Borrow(mask);
        nint* result = stackalloc nint[2];
        call(result, q.Handle, k.Handle, v.Handle, 0.0, causal ? (byte)1 : (byte)0, &optionalMask, LibTorchOps.OptionalDouble.Of(scale));
        var outputs = LibTorchOps.AdoptTuple(result, 2);
        return (outputs[0], outputs[1]);
    }

    /// <summary>softmax(q·kᵀ·scale + mask)·v and the rows' logsumexp, in fp64 from the same inputs.</summary>
    private static (Tensor Output, Tensor LogSumExp) Reference(Tensor q, Tensor k, Tensor v, bool causal, Tensor? mask, double scale)
    {
        var scores = (q.dtype == ScalarType.Float64 ? q : q.to(ScalarType.Float64)).matmul(k.to(ScalarType.Float64).transpose(-2, -1)) * scale; // (B, H, T, S)
        if (mask is not null) scores += mask.to(ScalarType.Float64);
        if (causal) scores = scores.masked_fill(ones(scores.shape[^2], scores.shape[^1], ScalarType.Bool).triu(1), double.NegativeInfinity);
        return (scores.softmax(-1).matmul(v.to(ScalarType.Float64)), scores.logsumexp(-1));
    }

    [Theory]
    [InlineData(false, true, 0.3)]
    [InlineData(true, false, null)]
    public void A_tuple_returning_operator_with_an_optional_tensor_and_an_optional_double_on_the_stack_computes_the_math(bool causal, bool masked, double? scale)
    {
        using var scope = NewDisposeScope();
        using var generator = new Generator(7);
        var q = randn([2, 4, 7, 16], generator: generator).requires_grad_(true);
        var k = randn([2, 4, 7, 16], generator: generator);
        var v = randn([2, 4, 7, 16], generator: generator);
        var mask = masked ? randn([2, 1, 7, 7], generator: generator) : null;

        var (output, logSumExp) = CpuFlash(q, k, v, causal, mask, scale);
        var (expected, expectedLse) = Reference(q.detach(), k, v, causal, mask, scale ?? 1 / Math.Sqrt(16));
        Assert.Equal([2, 4, 7, 16], output.shape);
        Assert.True(output.to(ScalarType.Float64).allclose(expected, rtol: 1e-5, atol: 1e-5), "the output is the math's (so the optional double and the mask arrived)");
        Assert.True(logSumExp.to(ScalarType.Float64).reshape(expectedLse.shape).allclose(expectedLse, rtol: 1e-5, atol: 1e-5), "the second element is the logsumexp (the tuple's order)");

        // The operator's autograd node came with it: the gradient through the call is the math's.
        output.sum().backward();
        var q64 = q.detach().to(ScalarType.Float64).requires_grad_(true);
        Reference(q64, k, v, causal, mask, scale ?? 1 / Math.Sqrt(16)).Output.sum().backward();
        Assert.True(q.grad!.to(ScalarType.Float64).allclose(q64.grad!, rtol: 1e-4, atol: 1e-5));
    }

    [Fact]
    public void SymInt_and_optional_SymInt_arguments_and_a_returned_tensor_that_owns_its_reference()
    {
        using var scope = NewDisposeScope();
        var slice = (delegate* unmanaged<nint*, nint, long, LibTorchOps.OptionalSymInt*, LibTorchOps.OptionalSymInt*, long*, void>)LibTorchOps.Find(SliceSymbol);
        var narrow = (delegate* unmanaged<nint*, nint, long, long*, long*, void>)LibTorchOps.Find(NarrowSymbol);
        Assert.True(slice != null && narrow != null);
        var x = arange(60, dtype: ScalarType.Float32).reshape(6, 10);

        nint result;
        var start = LibTorchOps.OptionalSymInt.Of(2);
        var none = LibTorchOps.OptionalSymInt.Of(null);
        long step = 3;
        slice(&result, x.Handle, 1, &start, &none, &step);
        using var sliced = LibTorchOps.Adopt(result);
        Assert.Equal(x[.., TensorIndex.Slice(2, null, 3)].data<float>().ToArray(), sliced.data<float>().ToArray());

        long from = 1, length = 4;
        narrow(&result, x.Handle, 0, &from, &length);
        var narrowed = LibTorchOps.Adopt(result);
        var expected = x.narrow(0, 1, 4).data<float>().ToArray();
        x.Dispose();
        // The view holds its own reference to the storage: readable after the tensor it came from is gone.
        Assert.Equal(expected, narrowed.data<float>().ToArray());
        narrowed.Dispose();
    }
}
