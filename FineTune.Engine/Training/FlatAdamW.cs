using FineTune.Engine.Backend;
using System.Globalization;
using FineTune.Engine.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FineTune.Engine.Training;

/// <summary>
/// AdamW over parameters that live in one flat fp32 buffer, with their gradients in another: torch.optim.AdamW's
/// single-tensor math (decoupled weight decay, bias correction as torch does it), but a handful of kernels per step
/// instead of ~8 per parameter. TorchSharp's AdamW, clip_grad_norm_ and zero_grad loop over the parameters in C#;
/// with LoRA on q/k/v/o of 24 layers that is ~1,500 launches and P/Invokes per step, which bound the step on a GPU.
/// <para>
/// The constructor copies each parameter into its slice of the value buffer and re-points the parameter at that
/// slice (Tensor.set_), and sets each parameter's .grad to the matching slice of the gradient buffer. backward()
/// (without create_graph) then accumulates into that slice in place, as autograd does for any defined .grad, so
/// the flat buffer holds every gradient without a copy. The parameters stay ordinary parameters of their modules.
/// </para>
/// </summary>
public sealed class FlatAdamW : IDisposable
{
    private const string ExpAvgKey = "exp_avg";
    private const string ExpAvgSqKey = "exp_avg_sq";
    private const string StepKey = "step";
    private const string ShapesKey = "shapes";

    private readonly Tensor _values;    // (N) every parameter, back to back
    private readonly Tensor _grads;     // (N) their gradients, same layout
    private readonly Tensor _expAvg;    // (N) first moment
    private readonly Tensor _expAvgSq;  // (N) second moment
    private readonly string _shapes;    // the layout, checked when state is loaded
    private bool _disposed;

    public FlatAdamW(IReadOnlyList<Parameter> parameters, double learningRate, double beta1 = 0.9, double beta2 = 0.999, double epsilon = 1e-8, double weightDecay = 0)
    {
        ArgumentNullException.ThrowIfNull(parameters);
        if (parameters.Count == 0) throw new ArgumentException("There are no parameters to optimize.", nameof(parameters));
        if (parameters.Distinct().Count() != parameters.Count) throw new ArgumentException("A parameter is listed twice.", nameof(parameters));
        var device = parameters[0].device;
        foreach (var p in parameters)
        {
            if (p.dtype != ScalarType.Float32)
                throw new ArgumentException($"FlatAdamW keeps fp32 parameters; one is {p.dtype} [{string.Join(", ", p.shape)}]. Keep the adapters in fp32.", nameof(parameters));
            if (p.device.type != device.type || p.device.index != device.index)
                throw new ArgumentException($"The parameters are on {device} and {p.device}; put them on one device.", nameof(parameters));
        }
        if (beta1 is < 0 or >= 1 || beta2 is < 0 or >= 1) throw new ArgumentOutOfRangeException(nameof(beta1), $"Adam betas must be in [0, 1); got {beta1}, {beta2}.");

        LearningRate = learningRate;
        Beta1 = beta1;
        Beta2 = beta2;
        Epsilon = epsilon;
        WeightDecay = weightDecay;
        Parameters = [.. parameters];
        _shapes = string.Join(",", parameters.Select(p => string.Join("x", p.shape)));

        long total = parameters.Sum(p => p.numel());
        using var _ = no_grad();
        // Owned by this object, not by whatever dispose scope the caller is in.
        _values = empty(total, dtype: ScalarType.Float32, device: device).DetachFromDisposeScope();
        _grads = zeros(total, dtype: ScalarType.Float32, device: device).DetachFromDisposeScope();
        _expAvg = zeros(total, dtype: ScalarType.Float32, device: device).DetachFromDisposeScope();
        _expAvgSq = zeros(total, dtype: ScalarType.Float32, device: device).DetachFromDisposeScope();
        long offset = 0;
        foreach (var p in parameters)
        {
            long n = p.numel();
            using var valueSlice = _values.narrow(0, offset, n);
            using var value = valueSlice.view(p.shape);
            value.copy_(p);
            var repointed = p.set_(value);      // p now reads and writes its slice of _values
            if (!ReferenceEquals(repointed, p)) repointed.Dispose(); // TorchSharp returns p itself or a second handle to it
            using var gradSlice = _grads.narrow(0, offset, n);
            using var grad = gradSlice.view(p.shape);
            p.grad = grad;                      // backward accumulates into the slice of _grads
            offset += n;
        }
    }

    /// <summary>The parameters, in buffer order.</summary>
    public IReadOnlyList<Parameter> Parameters { get; }

    /// <summary>The rate the next <see cref="Step"/> uses (the trainer sets it from the schedule before each step).</summary>
    public double LearningRate { get; set; }

    public double Beta1 { get; }
    public double Beta2 { get; }
    public double Epsilon { get; }
    public double WeightDecay { get; }

    /// <summary>Optimizer steps taken (torch's state["step"]; skipped steps do not count).</summary>
    public int StepCount { get; private set; }

    /// <summary>All gradients as one (N) fp32 tensor; each parameter's .grad is a view of it. Owned by this object.</summary>
    public Tensor Gradients => _grads;

    /// <summary>All parameter values as one (N) fp32 tensor; each parameter is a view of it. Owned by this object.</summary>
    public Tensor Values => _values;

    /// <summary>Sets every gradient to zero: one kernel. (The .grad views stay defined, so backward keeps accumulating in place.)</summary>
    public void ZeroGrad()
    {
        using var _ = no_grad();
        _grads.zero_();
    }

    /// <summary>
    /// Scales the gradients so that their global L2 norm is at most <paramref name="maxNorm"/> (when &gt; 0), as
    /// torch.nn.utils.clip_grad_norm_ does (coef = maxNorm / (norm + 1e-6), clamped to 1), without reading the norm on
    /// the host. Returns the norm before clipping as a 0-dim fp32 tensor on the device; the caller owns it.
    /// </summary>
    public Tensor ClipGradNorm(double maxNorm)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var total = _grads.norm();                                                  // ()
        if (maxNorm > 0)
        {
            // maxNorm / x written as torch's Scalar / Tensor operator computes it: reciprocal, then multiply.
            // Scalars owned and disposed after use (see ScalarArithmetic: TorchSharp's temporary ones can be freed mid-call).
            using Scalar max = maxNorm.ToScalar(), one = 1.0.ToScalar();
            var coefficient = total.Plus(1e-6).reciprocal_().mul_(max).clamp_max_(one);
            _grads.mul_(coefficient);
        }
        return scope.MoveToOuter(total);
    }

    /// <summary>One AdamW step on all parameters at the current <see cref="LearningRate"/> (torch.optim.AdamW, foreach=False, amsgrad=False).</summary>
    public void Step()
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        StepCount++;
        double lr = LearningRate;
        double biasCorrection1 = 1 - Math.Pow(Beta1, StepCount);
        double biasCorrection2 = 1 - Math.Pow(Beta2, StepCount);
        // Every Scalar owned and disposed after the kernels ran: TorchSharp's implicit double → Scalar conversions leave
        // them to the finalizer, which could free one while libtorch read it (see ScalarArithmetic).
        using Scalar decay = (1 - lr * WeightDecay).ToScalar(), beta2 = Beta2.ToScalar(), oneMinusBeta2 = (1 - Beta2).ToScalar(),
            stepSize = (-lr / biasCorrection1).ToScalar();
        using var oneMinusBeta1 = tensor(1 - Beta1); // lerp_ takes its weight as a tensor: a 0-dim fp64 one, as the implicit conversion made
        if (WeightDecay != 0) _values.mul_(decay);
        _expAvg.lerp_(_grads, oneMinusBeta1);
        _expAvgSq.mul_(beta2).addcmul_(_grads, _grads, value: oneMinusBeta2);
        var denominator = _expAvgSq.sqrt().DividedByInPlace(Math.Sqrt(biasCorrection2)).PlusInPlace(Epsilon);
        _values.addcdiv_(_expAvg, denominator, value: stepSize);
    }

    /// <summary>Writes the step count and both moments (flat, fp32) to a safetensors file.</summary>
    public void SaveState(string path)
    {
        SafeTensors.Save(path, [new(ExpAvgKey, _expAvg), new(ExpAvgSqKey, _expAvgSq)], new Dictionary<string, string>
        {
            [StepKey] = StepCount.ToString(CultureInfo.InvariantCulture),
            [ShapesKey] = _shapes,
        });
    }

    /// <summary>Restores what <see cref="SaveState"/> wrote; the parameters must have the same shapes in the same order.</summary>
    public void LoadState(string path)
    {
        using var reader = OpenState(path);
        if (!reader.Metadata.TryGetValue(ShapesKey, out var shapes) || !reader.Metadata.TryGetValue(StepKey, out var stepText)
            || !int.TryParse(stepText, NumberStyles.None, CultureInfo.InvariantCulture, out int step)
            || !reader.Contains(ExpAvgKey) || !reader.Contains(ExpAvgSqKey))
            throw new CheckpointException($"{path} is not optimizer state written by FineTune (it lacks the step, the layout or the moments).");
        if (shapes != _shapes)
            throw new CheckpointException($"{path} holds optimizer state for parameters shaped {Abbreviate(shapes)}, but this model's trainable parameters are {Abbreviate(_shapes)}. Resume with the same model and LoRA settings.");
        long total = _values.shape[0];
        if (reader.Entry(ExpAvgKey).Shape is not [var n1] || n1 != total || reader.Entry(ExpAvgSqKey).Shape is not [var n2] || n2 != total
            || reader.Entry(ExpAvgKey).ScalarType != ScalarType.Float32 || reader.Entry(ExpAvgSqKey).ScalarType != ScalarType.Float32)
            throw new CheckpointException($"{path} is damaged: its moments are not fp32 vectors of {total} values.");
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        _expAvg.copy_(reader.Read(ExpAvgKey));
        _expAvgSq.copy_(reader.Read(ExpAvgSqKey));
        StepCount = step;
    }

    private static SafeTensorsReader OpenState(string path)
    {
        try
        {
            return SafeTensorsReader.Open(path);
        }
        catch (ModelFormatException e)
        {
            throw new CheckpointException($"{path} cannot be read ({e.Message}); the checkpoint is damaged. Resume from an older one or start again.", e);
        }
    }

    private static string Abbreviate(string shapes) => shapes.Length <= 80 ? shapes : shapes[..80] + "…";

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        // The parameters and their .grad views keep the storage alive for as long as they need it.
        _values.Dispose();
        _grads.Dispose();
        _expAvg.Dispose();
        _expAvgSq.Dispose();
    }
}
