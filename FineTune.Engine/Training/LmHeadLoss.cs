using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Training;

/// <summary>
/// Sum of fp32 cross-entropy over a micro-batch's target positions with lm_head run on those positions only, in chunks of
/// <c>chunkSize</c> rows: the loss of <see cref="LoraTrainer.LossSum"/>.
/// <para>
/// Where gradients flow and the gradient the step's backward will bring to the sum is known in forward (it is: the loss
/// scale over the step's target count, <see cref="LoraTrainer"/>'s device scalars), each chunk's gradient is computed in
/// forward, with autograd on the chunk alone and that upstream gradient, and only the hidden states' gradient (N, H) is kept
/// for backward. The plain graph keeps every chunk's fp32 log-softmax (N × vocab × 4 bytes: 0.9 GB for 1,500 targets of
/// Qwen2's 152,064-token vocabulary) from the end of forward, when every layer's activations are held, into backward.
/// The gradient is the plain graph's bit for bit: the same ops on the same chunks with the same upstream gradient, and
/// backward multiplies by the brought gradient over the assumed one (exactly 1 when they agree, as they do in a step).
/// </para>
/// </summary>
internal static class LmHeadLoss
{
    /// <summary>For checks: how many chunks this thread ran through the cross-entropy kernel (<see cref="KernelChunk"/>).</summary>
    [ThreadStatic] internal static long KernelChunks;

    /// <summary>
    /// The sum (a 0-dim fp32 tensor) of cross-entropy of <c>lmHead(h)</c> against <paramref name="targets"/>.
    /// h: (N, H) the hidden states at the target positions; targets: (N). <paramref name="upstream"/>: the gradient backward
    /// will bring to the sum (0-dim fp32 on h's device), or null for the plain graph.
    /// </summary>
    public static Tensor Sum(nn.Module<Tensor, Tensor> lmHead, Tensor h, Tensor targets, int chunkSize, Tensor? upstream)
    {
        // Not where lm_head itself trains (an adapter on it): the chunk's autograd here gives h's gradient alone.
        if (upstream is not null && is_grad_enabled() && h.requires_grad && !lmHead.parameters().Any(p => p.requires_grad))
            return ManagedAutograd.Apply(() => GradientInForward.apply(lmHead, h, targets, chunkSize, upstream));
        return Chunks(lmHead, h, targets, chunkSize, upstream: null, gradient: null);
    }

    /// <summary>The chunks' summed loss; with <paramref name="gradient"/>, each chunk's h-gradient for <paramref name="upstream"/> written into it.</summary>
    private static Tensor Chunks(nn.Module<Tensor, Tensor> lmHead, Tensor h, Tensor targets, int chunkSize, Tensor? upstream, Tensor? gradient)
    {
        using var scope = NewDisposeScope();
        Tensor total = zeros(1, dtype: ScalarType.Float32, device: h.device).squeeze();
        long n = h.shape[0];
        for (long start = 0; start < n; start += chunkSize)
        {
            long end = Math.Min(n, start + chunkSize);
            using var chunkScope = NewDisposeScope();
            var hc = h[(int)start..(int)end];                                                          // (n, H)
            Tensor loss;
            if (gradient is not null && KernelChunk(lmHead, hc, targets[(int)start..(int)end], upstream!, gradient[(int)start..(int)end]) is { } summed)
            {
                total = chunkScope.MoveToOuter(total.Plus(summed));
                continue;
            }
            if (gradient is not null) hc = hc.detach().requires_grad_(true);
            // The chunk's logits go once the loss has them: backward needs log-softmax's output, not its input (fp32) nor
            // lm_head's (16-bit), and this runs at the end of forward, when every layer's activations are held.
            using (var projected = lmHead.forward(hc))                                                  // (n, V)
            using (var logits = projected.to(ScalarType.Float32))                                      // (n, V)
                loss = nn.functional.cross_entropy(logits, targets[(int)start..(int)end], reduction: nn.Reduction.Sum);
            if (gradient is not null)
            {
                var dh = autograd.grad([loss], [hc], [upstream!])[0];                                  // (n, H)
                using (no_grad()) gradient[(int)start..(int)end].copy_(dh);
                loss = loss.detach();
            }
            total = chunkScope.MoveToOuter(total.Plus(loss));
        }
        return scope.MoveToOuter(total);
    }

    /// <summary>
    /// A chunk's loss sum, its h-gradient written into <paramref name="gradientRows"/> (n, H), where lm_head is a plain
    /// linear (no bias, no adapter) on a GPU with kernels: the logits (n, V) in lm_head's dtype, then cross-entropy and its
    /// gradient in one kernel over them (FusedOps.CrossEntropyGradientInPlace), then h's gradient as linear's backward
    /// computes it, the logits' gradient times the weight (mm). The chunk then holds its 16-bit logits alone instead of
    /// 3.5 fp32 copies, at the step's peak. Null where this does not apply (torch's ops then, as in the CPU tests).
    /// </summary>
    private static Tensor? KernelChunk(nn.Module<Tensor, Tensor> lmHead, Tensor hc, Tensor targets, Tensor upstream, Tensor gradientRows)
    {
        if (Kernels.FusedOps.PlainAutograd || !Kernels.CudaKernels.On(hc.device)
            || lmHead is not LoraLinear { weight: { } weight, bias: null, AdapterActive: false } linear)
            return null;
        using var _ = no_grad();
        using var logits = linear.forward(hc.detach());                                               // (n, V), then their gradient
        using var rowLosses = Kernels.FusedOps.CrossEntropyGradientInPlace(logits, targets, upstream); // (n)
        if (rowLosses is null) return null;
        KernelChunks++;
        using (var dh = logits.mm(weight)) gradientRows.copy_(dh);                                      // (n, H)
        return rowLosses.sum();
    }

    /// <summary>The loss whose gradient was computed in forward: backward hands back h's, scaled by what it brings over what was assumed.</summary>
    private sealed class GradientInForward : autograd.SingleTensorFunction<GradientInForward>
    {
        public override string Name => "LmHeadLossGradientInForward";

        // vars: lmHead, h (N, H), targets (N), chunk size, upstream (0-dim fp32).
        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var lmHead = (nn.Module<Tensor, Tensor>)vars[0];
            var h = (Tensor)vars[1];
            var upstream = (Tensor)vars[4];
            var dh = empty_like(h);
            Tensor total;
            using (enable_grad()) total = Chunks(lmHead, h, (Tensor)vars[2], (int)vars[3], upstream, dh);
            ctx.save_for_backward([dh, upstream]);
            ctx.set_materialize_grads(false); // the output's twin is gone (ManagedAutograd.Apply); backward always gets a gradient
            return total;
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad)
        {
            var saved = ManagedAutograd.TakeSaved(ctx);
            using var dh = saved[0];
            using var upstream = saved[1];
            using var ratio = grad / upstream;                                                          // () exactly 1 in a step
            var dx = dh * ratio;
            grad.Dispose();
            return ManagedAutograd.Returned(null, dx, null, null, null);
        }
    }
}
