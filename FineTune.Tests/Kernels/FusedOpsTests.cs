using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using FineTune.Engine.Kernels;
using FineTune.Engine.Models;
using FineTune.Tests.Models;
using FineTune.Tests.Support;
using TorchSharp;
using static TorchSharp.torch;
using static FineTune.Tests.Kernels.TensorEquality;

namespace FineTune.Tests.Kernels;

/// <summary>A fact that runs only where an NVIDIA GPU is visible (skipped elsewhere, e.g. in CPU-only CI).</summary>
public sealed class GpuFactAttribute : FactAttribute
{
    public GpuFactAttribute()
    {
        if (!File.Exists("/dev/nvidiactl")) Skip = "needs an NVIDIA GPU";
    }
}

internal static class TensorEquality
{
    /// <summary>Same shape and every element equal (torch.equal).</summary>
    public static bool Same(Tensor a, Tensor b) => a.shape.SequenceEqual(b.shape) && a.eq(b).all().item<bool>();
}

/// <summary>The fused ops on the CPU: kernels stay off and every op is its torch formula.</summary>
public class FusedOpsCpuTests
{
    [Fact]
    public void Kernels_are_off_on_the_cpu_and_say_so()
    {
        var backend = ComputeBackend.Current;
        if (backend.IsCuda) return; // the GPU class below covers CUDA
        Assert.False(CudaKernels.On(CPU));
        Assert.StartsWith("off", backend.Kernels);
    }

    [Fact]
    public void Cpu_ops_equal_their_torch_formulas()
    {
        _ = ComputeBackend.Current;
        using var scope = NewDisposeScope();
        var gate = randn(3, 10);
        var up = randn(3, 10);
        Assert.True(Same(FusedOps.SiluMul(gate, up), nn.functional.silu(gate) * up));

        var x = randn(2, 5, 8);
        var weight = randn(8);
        var expected = weight * (x * rsqrt(x.pow(2).mean([-1], keepdim: true) + 1e-6));
        Assert.True(FusedOps.RmsNorm(x, weight, 1e-6).allclose(expected, 1e-6, 1e-6));

        var data = Nf4.Quantize(randn(16, 64));
        Assert.True(Same(Nf4.Dequantize(data, ScalarType.Float32), Nf4.DequantizeWithTorch(data, ScalarType.Float32)));
        Assert.Null(FusedOps.Nf4MatVec(randn(1, 64), data));
    }
}

/// <summary>
/// Each kernel against its torch fallback on the GPU (FINETUNE_KERNELS unset), in fp32, bf16 and fp16 (the T4's
/// dtype), on fresh random inputs. Bit-equal: NF4 dequantization, SiLU·up, RoPE. Within a bound (max |diff| over the
/// largest |fallback|): RMSNorm 1e-2 in 16 bits (one rounding step of bf16 is 2^-8 of a value) and 1e-6 in fp32, as
/// its fp32 sum of squares adds in another order; the NF4 matrix-vector product 1e-2 in 16 bits and 1e-5 in fp32, as
/// its fp32 dot products add in another order than cuBLAS.
/// </summary>
[Trait(Category.Name, Category.Gpu)]
public class FusedOpsGpuTests
{
    public static TheoryData<ScalarType> Dtypes => new(ScalarType.BFloat16, ScalarType.Float16, ScalarType.Float32);

    /// <summary>The GPU the kernels run on; fails when a GPU is present but the engine or its kernels are not on it.</summary>
    internal static Device Cuda()
    {
        var backend = ComputeBackend.Current;
        Assert.True(backend.IsCuda, $"A GPU is present but the engine runs on the CPU ({backend.Reason}).");
        Assert.True(CudaKernels.On(backend.Device), $"The kernels are off on the GPU: {backend.Kernels}");
        return backend.Device;
    }

    private static (Tensor Kernel, Tensor Fallback) Both(Func<Tensor> op)
    {
        var kernel = op();
        CudaKernels.Suspended = true;
        try { return (kernel, op()); }
        finally { CudaKernels.Suspended = false; }
    }

    private static void AssertWithin(Tensor kernel, Tensor fallback, double bound)
    {
        Assert.Equal(fallback.shape, kernel.shape);
        double diff = (kernel.to(ScalarType.Float64) - fallback.to(ScalarType.Float64)).abs().max().item<double>();
        double scale = fallback.to(ScalarType.Float64).abs().max().item<double>();
        Assert.True(diff <= bound * scale, $"max |kernel - fallback| {diff:G3} over a scale of {scale:G3} (bound {bound:G3})");
    }

    [GpuTheory]
    [MemberData(nameof(Dtypes))]
    public void Nf4_dequantize_equals_the_torch_ops(ScalarType dtype)
    {
        var device = Cuda();
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        foreach (var (rows, cols) in new[] { (256, 896), (33, 77) }) // 33 x 77: an odd count and a partial last block
            foreach (bool doubleQuant in new[] { true, false })
            {
                var data = Nf4.Quantize(randn(rows, cols, device: device) * 0.05, doubleQuant);
                var (kernel, fallback) = Both(() => Nf4.Dequantize(data, dtype));
                Assert.True(Same(kernel, fallback), $"{rows}x{cols} double quant {doubleQuant}: not bit-equal");
            }
    }

    [GpuTheory]
    [MemberData(nameof(Dtypes))]
    public void Nf4_matvec_equals_dequantize_then_linear(ScalarType dtype)
    {
        var device = Cuda();
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var data = Nf4.Quantize(randn(300, 1024, device: device) * 0.05);
        var x = randn(1, 1, 1024, device: device).to(dtype);
        var kernel = FusedOps.Nf4MatVec(x, data);
        Assert.NotNull(kernel);
        AssertWithin(kernel, nn.functional.linear(x, Nf4.DequantizeWithTorch(data, dtype)), dtype == ScalarType.Float32 ? 1e-5 : 1e-2);
    }

    [GpuTheory]
    [MemberData(nameof(Dtypes))]
    public void Rms_norm_silu_mul_and_rotary_equal_the_torch_ops(ScalarType dtype)
    {
        var device = Cuda();
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var x = (randn(3, 7, 896, device: device) * 3).to(dtype);
        var weight = (randn(896, device: device) * 0.1 + 1).to(dtype);
        var (norm, normFallback) = Both(() => FusedOps.RmsNorm(x, weight, 1e-6));
        AssertWithin(norm, normFallback, dtype == ScalarType.Float32 ? 1e-6 : 1e-2);

        foreach (var (rows, cols) in new[] { (4, 1000), (3, 333) }) // 16 values a thread, and one a thread
        {
            var gate = (randn(rows, cols, device: device) * 4).to(dtype);
            var up = randn(rows, cols, device: device).to(dtype);
            var (swiglu, swigluFallback) = Both(() => FusedOps.SiluMul(gate, up));
            Assert.True(Same(swiglu, swigluFallback), $"silu(gate) * up, {rows}x{cols}: not bit-equal");
        }

        var q = randn(2, 9, 4, 64, device: device).to(dtype).transpose(1, 2);  // (B, nH, T, hD), a transposed view
        var rope = new RotaryEmbedding(64, new RopeSettings(1000000.0), device);
        var (cos, sin) = rope.Compute(arange(0, 9, device: device).unsqueeze(0).expand(2, 9), dtype);
        var (c, s) = AttentionOps.RotaryTables(cos, sin);
        var (rotary, rotaryFallback) = Both(() => FusedOps.Rotary(q, c, s));
        Assert.True(Same(rotary, rotaryFallback), "RoPE: not bit-equal");
    }

    /// <summary>
    /// Every visible GPU loads the kernels into its own context and runs them there: from the test's thread (where
    /// libtorch has GPU 0's context current, so GPU 1+ needs its own pushed) and from a fresh thread, as a
    /// data-parallel replica's. With one GPU this covers GPU 0 from both threads; the two-GPU machine covers the rest.
    /// </summary>
    [GpuFact]
    public void Every_gpu_runs_the_kernels_in_its_own_context()
    {
        Cuda();
        for (int ordinal = 0; ordinal < cuda.device_count(); ordinal++)
        {
            var device = new Device(DeviceType.CUDA, ordinal);
            Assert.True(CudaKernels.On(device), $"GPU {ordinal}: {CudaKernels.FailureOn(ordinal)}");
            AssertKernelsEqualFallbacks(device);
            Exception? failure = null;
            var replica = new Thread(() =>
            {
                try { AssertKernelsEqualFallbacks(device); }
                catch (Exception e) { failure = e; }
            });
            replica.Start();
            replica.Join();
            Assert.Null(failure);
        }
    }

    private static void AssertKernelsEqualFallbacks(Device device)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var gate = (randn(5, 1024, device: device) * 4).to(ScalarType.BFloat16);
        var up = randn(5, 1024, device: device).to(ScalarType.BFloat16);
        var (swiglu, swigluFallback) = Both(() => FusedOps.SiluMul(gate, up));
        Assert.Equal(device.index, swiglu.device_index);
        Assert.True(Same(swiglu, swigluFallback), $"{device}: silu(gate) * up not bit-equal");
        var data = Nf4.Quantize(randn(64, 256, device: device) * 0.05);
        var (weight, weightFallback) = Both(() => Nf4.Dequantize(data, ScalarType.BFloat16));
        Assert.True(Same(weight, weightFallback), $"{device}: NF4 dequantize not bit-equal");
    }

    /// <summary>Training's fused functions with their kernels against the torch ops' graph (bounds as on the CPU:
    /// FusedOpsTrainingTests; RoPE bit-equal); the kernels' forward within RMSNorm's bound of the fallback's.</summary>
    [GpuTheory]
    [MemberData(nameof(Dtypes))]
    public void Fused_training_functions_equal_the_torch_graph(ScalarType dtype)
    {
        var device = Cuda();
        using var scope = NewDisposeScope();
        double bound = FusedOpsTrainingTests.Bound(dtype);
        var x = (randn(3, 7, 896, device: device) * 3).to(dtype);
        var weight = (randn(896, device: device) * 0.1 + 1).to(dtype);
        var dy = randn(3, 7, 896, device: device).to(dtype);
        var (norm, normPlain) = FusedOpsTrainingTests.Both(t => FusedOps.RmsNorm(t[0], weight, 1e-6), [x], dy);
        FusedOpsTrainingTests.AssertWithin(norm[0], normPlain[0], bound, "RMSNorm");
        FusedOpsTrainingTests.AssertWithin(norm[1], normPlain[1], bound, "RMSNorm dx");
        var gate = (randn(5, 1000, device: device) * 4).to(dtype);
        var up = randn(5, 1000, device: device).to(dtype);
        var dh = randn(5, 1000, device: device).to(dtype);
        var (swiglu, swigluPlain) = FusedOpsTrainingTests.Both(t => FusedOps.SiluMul(t[0], t[1]), [gate, up], dh);
        Assert.True(Same(swiglu[0], swigluPlain[0]), "silu(gate) * up: not bit-equal");
        FusedOpsTrainingTests.AssertWithin(swiglu[1], swigluPlain[1], bound, "dgate");
        FusedOpsTrainingTests.AssertWithin(swiglu[2], swigluPlain[2], bound, "dup");
        var q = randn(2, 3, 9, 64, device: device).to(dtype);
        var dq = randn(2, 3, 9, 64, device: device).to(dtype);
        var (c, s) = FusedOpsTrainingTests.RotaryTestTables(1, 9, 64, dtype, random: false, device);
        var (rotary, rotaryPlain) = FusedOpsTrainingTests.Both(t => FusedOps.Rotary(t[0], c, s), [q], dq);
        Assert.True(Same(rotary[0], rotaryPlain[0]), "RoPE: not bit-equal");
        Assert.True(Same(rotary[1], rotaryPlain[1]), "RoPE dx: not bit-equal");
    }

    /// <summary>
    /// Cross-entropy and its gradient in one kernel over a chunk's logits (LmHeadLoss on a GPU) against torch's fp32
    /// log_softmax, nll_loss (sum) and autograd with the cast back: gradients within one rounding step, rows' losses
    /// within 1e-6; ignored rows (-100) give loss 0 and gradient 0. Widths of 16 values a thread and of one.
    /// </summary>
    [GpuTheory]
    [MemberData(nameof(Dtypes))]
    public void The_cross_entropy_kernel_equals_torchs_loss_and_gradient(ScalarType dtype)
    {
        var device = Cuda();
        using var scope = NewDisposeScope();
        foreach (long vocab in new long[] { 4096, 1003 })
        {
            var logits = (randn(9, vocab, device: device) * 3).to(dtype);
            var targets = tensor(new long[] { 5, -100, 17, 0, vocab - 1, 3, -100, 100, 2 }, device: device);
            var upstream = tensor(1.0f / 7, device: device);
            var gradient = logits.clone();
            var losses = FusedOps.CrossEntropyGradientInPlace(gradient, targets, upstream);
            Assert.NotNull(losses);
            Tensor torchGradient;
            using (enable_grad())
            {
                var leaf = logits.detach().clone().requires_grad_(true);
                var sum = nn.functional.cross_entropy(leaf.to(ScalarType.Float32), targets, reduction: nn.Reduction.Sum);
                torchGradient = autograd.grad([sum], [leaf], [upstream])[0];
            }
            var torchLosses = nn.functional.cross_entropy(logits.to(ScalarType.Float32), targets, reduction: nn.Reduction.None);
            FusedOpsTrainingTests.AssertWithin(gradient, torchGradient, FusedOpsTrainingTests.Bound(dtype), $"dlogits, V {vocab}");
            FusedOpsTrainingTests.AssertWithin(losses!, torchLosses, 1e-6, $"row losses, V {vocab}");
            Assert.Equal(0f, losses![1].item<float>());
            Assert.True(gradient[6].eq(0).all().item<bool>(), "an ignored row's gradient is not 0");
        }
    }

    /// <summary>SiLU·up's backward writing gate's and up's gradients over them (the MLP's gradientsInPlace): bit-equal to new tensors.</summary>
    [GpuTheory]
    [MemberData(nameof(Dtypes))]
    public void Silu_mul_gradients_in_place_equal_those_in_new_tensors(ScalarType dtype)
    {
        var device = Cuda();
        using var scope = NewDisposeScope();
        var gate = (randn(5, 1024, device: device) * 4).to(dtype);
        var up = randn(5, 1024, device: device).to(dtype);
        var dy = randn(5, 1024, device: device).to(dtype);
        Tensor Run(bool inPlace)
        {
            using var _ = enable_grad();
            var gl = gate.detach().clone().requires_grad_(true);
            var ul = up.detach().clone().requires_grad_(true);
            FusedOps.SiluMul(gl * 1.0, ul * 1.0, inPlace).backward([dy]);   // products of the leaves, as the MLP's projections
            return cat([gl.grad!, ul.grad!]);
        }
        Assert.True(Same(Run(true), Run(false)), "SiLU·up's gradients in place differ from those in new tensors");
    }

    [GpuFact]
    public void With_gradients_the_ops_build_a_graph_to_their_input()
    {
        var device = Cuda();
        using var scope = NewDisposeScope();
        var x = randn(2, 3, 64, device: device, dtype: ScalarType.BFloat16).requires_grad_(true);
        var weight = ones(64, device: device, dtype: ScalarType.BFloat16);
        var y = FusedOps.RmsNorm(x, weight, 1e-6);
        Assert.True(y.requires_grad);
        y.sum().backward();
        Assert.NotNull(x.grad);
    }
}
