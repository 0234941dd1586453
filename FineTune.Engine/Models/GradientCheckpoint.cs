using FineTune.Engine.Adapters;
using FineTune.Engine.Backend;
using TorchSharp;
using static TorchSharp.torch;

namespace FineTune.Engine.Models;

/// <summary>
/// Gradient checkpointing as HF's gradient_checkpointing_enable() does it (torch.utils.checkpoint, reentrant): a
/// decoder layer runs forward without keeping its activations, keeping only its input; backward runs the layer
/// again with gradients on and back-propagates through that copy. Memory for activations drops from every layer's
/// to one layer's, for about one extra forward. LoRA dropout draws the same masks both times (<see cref="DropoutTape"/>).
/// </summary>
public static class GradientCheckpoint
{
    /// <summary>
    /// <paramref name="layer"/>(hidden, pass), checkpointed when <paramref name="checkpointed"/> (the pass's choice for this
    /// layer, <see cref="DecoderPass.Checkpoints"/>) and gradients are being recorded (never with a KV cache: generation
    /// has no backward).
    /// </summary>
    public static Tensor Apply(Func<Tensor, DecoderPass, Tensor> layer, Tensor hidden, DecoderPass pass, bool checkpointed)
    {
        if (!is_grad_enabled() || pass.Cache is not null) return layer(hidden, pass);
        if (!checkpointed)
        {
            // Seeds only (nothing to replay): LoRA dropout on CUDA draws the masks a checkpointed layer would, so whether a
            // run checkpoints does not change its masks.
            using var seeds = new DropoutTape(keepMasks: false);
            using (seeds.Record()) return layer(hidden, pass);
        }
        CheckpointedCalls++;
        // The first layer's input comes from a frozen embedding; without requires_grad the checkpoint's output would
        // not require grad either and no LoRA weight would learn (HF: enable_input_require_grads).
        var input = hidden.requires_grad ? hidden : hidden.detach().requires_grad_(true);
        var retained = pass.RetainForBackward();
        return ManagedAutograd.Apply(() => CheckpointedLayer.apply(input, layer, retained));
    }

    /// <summary>For tests: how many layers this thread has run checkpointed.</summary>
    [ThreadStatic] internal static long CheckpointedCalls;

    /// <summary>True on the thread that is running a checkpointed layer again for its backward: the graph built then
    /// lives only until that layer's backward, right after.</summary>
    public static bool Recomputing => _recomputing > 0;

    [ThreadStatic] private static int _recomputing;

    private sealed class CheckpointedLayer : autograd.SingleTensorFunction<CheckpointedLayer>
    {
        public override string Name => nameof(CheckpointedLayer);

        // vars: hidden (B, T, H), the layer, the retained pass.
        public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
        {
            var hidden = (Tensor)vars[0];
            var tape = new DropoutTape();
            ctx.save_for_backward([hidden]);
            ctx.save_data("layer", vars[1]);
            ctx.save_data("pass", vars[2]);
            ctx.save_data("tape", tape);
            ctx.set_materialize_grads(false); // the output's twin is freed (ManagedAutograd.Apply); backward always gets a gradient
            var pass = (RetainedPass)vars[2];
            using var _ = no_grad();
            using var recording = tape.Record();
            return ((Func<Tensor, DecoderPass, Tensor>)vars[1])(hidden, pass.Pass);
        }

        public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
        {
            var layer = (Func<Tensor, DecoderPass, Tensor>)ctx.get_data("layer");
            var pass = (RetainedPass)ctx.get_data("pass");
            using var tape = (DropoutTape)ctx.get_data("tape");
            Tensor inputGrad;
            using (var scope = NewDisposeScope())
            using (enable_grad())
            {
                var saved = ManagedAutograd.TakeSaved(ctx);                          // the layer's input is needed no more after this
                var input = saved[0].detach().requires_grad_(true);                  // (B, T, H)
                Tensor output;
                _recomputing++;
                try
                {
                    using (tape.Replay()) output = layer(input, pass.Pass);
                }
                finally
                {
                    _recomputing--;
                }
                // Accumulates into the LoRA weights' .grad, as the first forward would have.
                autograd.backward([output], [gradOutput]);
                gradOutput.Dispose();
                inputGrad = scope.MoveToOuter(input.grad!);
            }
            pass.Release();
            return ManagedAutograd.Returned(inputGrad, null, null);
        }
    }
}
