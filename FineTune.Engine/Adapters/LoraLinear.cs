using FineTune.Engine.Backend;
using FineTune.Engine.Models;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FineTune.Engine.Adapters;

/// <summary>
/// Every linear projection of our models: y = x·Wᵀ + b, plus an optional LoRA path
/// B(A(dropout(x)))·scaling (PEFT lora.Linear). Parameter names equal the checkpoint's keys
/// ("weight", "bias") and PEFT's ("lora_A.weight", "lora_B.weight").
/// The base weight is frozen once an adapter is attached; it may also be held as NF4 (QLoRA):
/// then "weight" is gone and the packed codes + quantization state are buffers, dequantized
/// on the fly in forward and again in backward (no full-precision copy is kept).
/// </summary>
public sealed class LoraLinear : nn.Module<Tensor, Tensor>
{
    public int InFeatures { get; }
    public int OutFeatures { get; }

#pragma warning disable IDE1006 // names equal the checkpoint keys
    public Parameter? weight;   // (out, in); null while the base weight is held as NF4
    public Parameter? bias;     // (out)
    public Linear? lora_A;      // in -> r, no bias; PEFT key lora_A.weight (r, in)
    public Linear? lora_B;      // r -> out, no bias; PEFT key lora_B.weight (out, r)
    public Dropout? lora_dropout;
    public Tensor? weight_nf4;            // (ceil(out·in/2)) uint8, two codes per byte
    public Tensor? weight_absmax_codes;   // (blocks) uint8
    public Tensor? weight_absmax_nested;  // (ceil(blocks/256)) fp32
    public Tensor? weight_absmax_offset;  // () fp32
    public Tensor? weight_absmax;         // (blocks) fp32, instead of the three above without double quantization
#pragma warning restore IDE1006

    /// <summary>LoRA scaling: alpha/r (alpha/√r with rsLoRA); 0 when no adapter is attached.</summary>
    public double Scaling { get; private set; }

    /// <summary>True while the LoRA update is folded into the base weight.</summary>
    public bool Merged { get; private set; }

    /// <summary>When false the LoRA path is skipped (base model output), e.g. to compare before/after.</summary>
    public bool AdapterEnabled { get; set; } = true;

    /// <summary>The dtype the NF4 weight is dequantized to for compute (bf16, or fp16 where bf16 is missing).</summary>
    public ScalarType ComputeDtype { get; set; } = ScalarType.BFloat16;

    /// <summary>
    /// The random source of LoRA dropout while training. The trainer sets one generator for all layers and
    /// reseeds it every step, so dropout masks do not depend on other work using torch's global RNG
    /// (a chat sampling tokens, tests running in parallel) and a resumed run draws the same masks.
    /// Null: torch's global generator (nn.Dropout).
    /// </summary>
    public Generator? DropoutGenerator { get; set; }

    public bool HasAdapter => lora_A is not null;
    public bool IsQuantized => weight_nf4 is not null;

    private long[] _quantizedShape = [];

    public LoraLinear(int inFeatures, int outFeatures, bool hasBias, Device? device = null, ScalarType? dtype = null)
        : base(nameof(LoraLinear))
    {
        InFeatures = inFeatures;
        OutFeatures = outFeatures;
        weight = new Parameter(empty(outFeatures, inFeatures, dtype: dtype, device: device), requires_grad: false);
        bias = hasBias ? new Parameter(zeros(outFeatures, dtype: dtype, device: device), requires_grad: false) : null;
        RegisterComponents();
    }

    /// <summary>
    /// Copies a checkpoint weight (out, in) into this layer, converting dtype and device; a layer built
    /// on the meta device takes the source's device and dtype instead.
    /// </summary>
    public void LoadWeight(Tensor source)
    {
        if (weight is null) throw new InvalidOperationException("This layer holds its weight quantized; it cannot take a dense weight.");
        CheckShape(source, [OutFeatures, InFeatures], "weight");
        using var _ = no_grad();
        if (weight.is_meta) weight = Materialize(nameof(weight), weight, source);
        else weight.copy_(source);
    }

    /// <summary>Copies a checkpoint bias (out) into this layer.</summary>
    public void LoadBias(Tensor source)
    {
        if (bias is null) throw new InvalidOperationException("This layer was built without a bias.");
        CheckShape(source, [OutFeatures], "bias");
        using var _ = no_grad();
        if (bias.is_meta) bias = Materialize(nameof(bias), bias, source);
        else bias.copy_(source);
    }

    /// <summary>
    /// A layer built on the meta device holds no memory until its checkpoint tensor arrives (ModelLoader
    /// builds models that way); it then takes a copy of the source as given: its device and dtype.
    /// </summary>
    private Parameter Materialize(string name, Parameter placeholder, Tensor source) => Replace(name, placeholder, source.detach().clone());

    private Parameter Replace(string name, Parameter old, Tensor value)
    {
        var parameter = new Parameter(value, requires_grad: old.requires_grad);
        parameter.DetachFromDisposeScope();
        ConditionallyRegisterParameter(name, parameter);
        old.Dispose();
        return parameter;
    }

    /// <summary>
    /// Makes the dense weight (out, in) and bias (out) views of rows of tensors that other projections of the same input
    /// share (<see cref="StackedLinear"/>): rows holding the loaded values, or rows the checkpoint fills next (for a
    /// weight still on the meta device). The keys, merging (in place) and adapters are unchanged.
    /// </summary>
    internal (Parameter Weight, Parameter? Bias) UseStackedRows(Tensor weightRows, Tensor? biasRows)
    {
        if (weight is null) throw new InvalidOperationException("A weight held in 4 bits cannot be stacked.");
        weight = Replace(nameof(weight), weight, weightRows);
        if (bias is not null) bias = Replace(nameof(bias), bias, biasRows ?? throw new ArgumentNullException(nameof(biasRows)));
        return (weight, bias);
    }

    /// <summary>The LoRA path adds to this layer's output (attached, enabled and not merged).</summary>
    [System.Diagnostics.CodeAnalysis.MemberNotNullWhen(true, nameof(lora_A), nameof(lora_B))]
    internal bool AdapterActive => lora_A is not null && lora_B is not null && !Merged && AdapterEnabled;

    /// <summary>
    /// Replaces the dense weight by its NF4 form (bitsandbytes' quantize_4bit, nf4, blocksize 64, with or without
    /// double quantization). <paramref name="source"/> is the checkpoint weight (out, in); when null the
    /// layer's own weight is quantized. The dense weight is released.
    /// </summary>
    public void QuantizeWeight(Tensor? source = null, ScalarType computeDtype = ScalarType.BFloat16, bool doubleQuantization = true)
    {
        if (Merged) throw new InvalidOperationException("Unmerge the adapter before quantizing the base weight.");
        var dense = source ?? weight ?? throw new InvalidOperationException("This layer's weight is already quantized.");
        CheckShape(dense, [OutFeatures, InFeatures], "weight");
        // A layer built on the meta device (ModelLoader) quantizes on the checkpoint tensor's device.
        var device = weight is { is_meta: false } ? weight.device : weight_nf4?.device ?? dense.device;
        using var onDevice = dense.device_type == device.type && dense.device_index == device.index ? null : dense.to(device);
        var data = Nf4.Quantize(onDevice ?? dense, doubleQuantization);
        ReleaseQuantized();
        if (weight is not null)
        {
            _internal_params.Remove(nameof(weight));
            weight.Dispose();
            weight = null;
        }
        // The layer owns these: keep them out of any caller's dispose scope.
        weight_nf4 = data.Packed.DetachFromDisposeScope();
        weight_absmax_codes = data.AbsmaxCodes?.DetachFromDisposeScope();
        weight_absmax_nested = data.NestedAbsmax?.DetachFromDisposeScope();
        weight_absmax_offset = data.Offset?.DetachFromDisposeScope();
        weight_absmax = data.Absmax?.DetachFromDisposeScope();
        _quantizedShape = data.Shape;
        register_buffer(nameof(weight_nf4), weight_nf4);
        if (weight_absmax is not null) register_buffer(nameof(weight_absmax), weight_absmax);
        else
        {
            register_buffer(nameof(weight_absmax_codes), weight_absmax_codes!);
            register_buffer(nameof(weight_absmax_nested), weight_absmax_nested!);
            register_buffer(nameof(weight_absmax_offset), weight_absmax_offset!);
        }
        ComputeDtype = computeDtype;
    }

    /// <summary>The NF4 state of the base weight (views of the buffers; do not dispose).</summary>
    public Nf4Data? QuantizedState => weight_nf4 is null ? null
        : new Nf4Data(weight_nf4, weight_absmax_codes, weight_absmax_nested, weight_absmax_offset, _quantizedShape) { Absmax = weight_absmax };

    /// <summary>The base weight (out, in) in <paramref name="dtype"/>: the dense one, or NF4 dequantized. Caller owns it.</summary>
    public Tensor BaseWeight(ScalarType? dtype = null)
    {
        using var _ = no_grad();
        if (weight is not null) return weight.detach().to(dtype ?? weight.dtype).clone();
        return Nf4.Dequantize(QuantizedState!, dtype ?? ComputeDtype);
    }

    /// <summary>
    /// Attaches a LoRA adapter like PEFT's lora.Linear.update_layer: lora_A Kaiming-uniform (a=√5,
    /// nn.Linear's default), lora_B zeros, base weight and bias frozen. The adapter is fp32 unless
    /// <paramref name="adapterDtype"/> says otherwise (PEFT keeps adapters in fp32 under autocast).
    /// </summary>
    public void AttachLora(int rank, double alpha, double dropout, bool useRsLora = false, ScalarType adapterDtype = ScalarType.Float32, Generator? generator = null)
    {
        if (HasAdapter) throw new InvalidOperationException("This layer already has a LoRA adapter.");
        new LoraSettings(rank, alpha, dropout, UseRsLora: useRsLora).Validate();
        var device = weight is { is_meta: false } ? weight.device : weight_nf4?.device ?? weight!.device;
        lora_A = nn.Linear(InFeatures, rank, hasBias: false, device: device, dtype: adapterDtype);
        lora_B = nn.Linear(rank, OutFeatures, hasBias: false, device: device, dtype: adapterDtype);
        using (no_grad())
        {
            // kaiming_uniform_(a=√5) on (r, in): gain √(2/(1+5)), bound = gain·√(3/fan_in) = 1/√in.
            double bound = 1.0 / Math.Sqrt(InFeatures);
            if (generator is not null && device.type != DeviceType.CPU)
            {
                using var onCpu = empty(rank, InFeatures, dtype: adapterDtype).uniform_(-bound, bound, generator); // a CPU generator fills CPU tensors
                lora_A.weight!.copy_(onCpu);
            }
            else
            {
                lora_A.weight!.uniform_(-bound, bound, generator);
            }
            nn.init.zeros_(lora_B.weight!);
        }
        lora_A.weight!.DetachFromDisposeScope();
        lora_B.weight!.DetachFromDisposeScope();
        lora_dropout = nn.Dropout(dropout);
        register_module(nameof(lora_A), lora_A);
        register_module(nameof(lora_B), lora_B);
        register_module(nameof(lora_dropout), lora_dropout);
        Scaling = useRsLora ? alpha / Math.Sqrt(rank) : alpha / rank;
        weight?.requires_grad_(false);
        bias?.requires_grad_(false);
    }

    /// <summary>The LoRA update B·A·scaling (out, in) in fp32 (PEFT get_delta_weight).</summary>
    public Tensor DeltaWeight()
    {
        if (lora_A is null || lora_B is null) throw new InvalidOperationException("This layer has no LoRA adapter.");
        return DeltaWeight(lora_A.weight!, lora_B.weight!, Scaling);
    }

    /// <summary>B·A·scaling in fp32 from lora_A (r, in) and lora_B (out, r): the update of the (out, in) base weight.</summary>
    public static Tensor DeltaWeight(Tensor loraA, Tensor loraB, double scaling)
    {
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        var delta = matmul(loraB.to(ScalarType.Float32), loraA.to(ScalarType.Float32)) * scaling; // (out, in)
        return scope.MoveToOuter(delta);
    }

    /// <summary>
    /// Folds the update into the base weight (W += B·A·scaling). Refuses when the result would hold
    /// NaN or infinity (PEFT safe_merge). An NF4 base is dequantized, merged and kept dense.
    /// </summary>
    public void Merge()
    {
        if (Merged) return;
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var baseWeight = BaseWeight(ScalarType.Float32);
        var merged = baseWeight + DeltaWeight();
        if (!isfinite(merged).all().item<bool>())
            throw new ArithmeticException($"Merging the LoRA adapter into a {OutFeatures}×{InFeatures} layer gives NaN or infinite weights; the adapter is broken (train again with a lower learning rate).");
        var dtype = weight?.dtype ?? ComputeDtype;
        if (weight is null)
        {
            weight = new Parameter(merged.to(dtype).detach(), requires_grad: false);
            weight.DetachFromDisposeScope();
            ReleaseQuantized();
            register_parameter(nameof(weight), weight);
        }
        else
        {
            weight.copy_(merged);
        }
        Merged = true;
    }

    /// <summary>Replaces an NF4 base weight by its dequantized dense form (for merged exports of layers without an adapter).</summary>
    public void MakeDense()
    {
        if (weight is not null) return;
        using var _ = no_grad();
        weight = new Parameter(BaseWeight(ComputeDtype), requires_grad: false);
        weight.DetachFromDisposeScope();
        ReleaseQuantized();
        register_parameter(nameof(weight), weight);
    }

    /// <summary>Takes the update back out of the base weight (W -= B·A·scaling).</summary>
    public void Unmerge()
    {
        if (!Merged) return;
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var restored = weight!.to(ScalarType.Float32) - DeltaWeight();
        weight.copy_(restored);
        Merged = false;
    }

    public override Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        var y = BaseForward(x);                                                 // (..., out), bias included
        if (AdapterActive) y = PlusLora(y, x);
        return scope.MoveToOuter(y);
    }

    /// <summary>x·Wᵀ + b with the base weight alone, dense or NF4 (..., out).</summary>
    private Tensor BaseForward(Tensor x) => weight is not null
        ? nn.functional.linear(x, weight, bias)
        : Nf4Forward(x.dtype == ComputeDtype ? x : x.to(ComputeDtype));

    /// <summary>
    /// y + B(A(dropout(x)))·scaling in the activations' dtype, as PEFT under HF Trainer's bf16/fp16 autocast computes it:
    /// the fp32 adapter weights are cast (their gradients still reach the fp32 weights), the activations are not. A cast of
    /// x to fp32 per projection was the alternative: a fp32 copy of x kept for backward in every projection. During
    /// training the casts are made once per optimizer step (<see cref="ComputeCopies"/>) instead of twice per projection
    /// and pass; a training step is bound by the host's time per op.
    /// </summary>
    private Tensor PlusLora(Tensor y, Tensor x)
    {
        var (a, b) = LoraWeights(y.dtype);                                                          // (r, in), (out, r)
        return PlusUp(y, Down(InDtype(x, y.dtype), a), b);
    }

    /// <summary>
    /// y + B(down)·scaling, down (..., r) the LoRA path's A output and b lora_B (out, r): the up half as one matmul that
    /// adds y (addmm, beta 1). No separate add of two (..., out) tensors in forward, and backward scales the small
    /// gradients of down (..., r) and b (r, out) instead of y's (..., out) one; y's gradient passes through untouched.
    /// The sum is rounded once (from the matmul's fp32 accumulator) where a matmul then an add rounded twice.
    /// </summary>
    private Tensor PlusUp(Tensor y, Tensor down, Tensor b)
    {
        long outFeatures = y.shape[^1], r = down.shape[^1];
        using var y2 = y.reshape(-1, outFeatures);                                             // (N, out), a view where y allows
        using var down2 = down.reshape(-1, r);                                                  // (N, r)
        using var bT = b.t();                                                                   // (r, out)
        using var sum = y2.addmm(down2, bT, beta: 1, alpha: (float)Scaling);                    // (N, out)
        return sum.view(y.shape);                                                               // (..., out)
    }

    /// <summary>lora_A (r, in) and lora_B (out, r) in <paramref name="dtype"/>: the working copies where they are in it, else casts.</summary>
    private (Tensor A, Tensor B) LoraWeights(ScalarType dtype) => ComputeCopies is { } copies && copies.A.dtype == dtype
        ? copies
        : (InDtype(lora_A!.weight!, dtype), InDtype(lora_B!.weight!, dtype));

    /// <summary>
    /// <see cref="PlusLora"/> for projections of one input x whose <see cref="Down"/>s all take the kernels' draws
    /// (<see cref="DrawsOnDevice"/>), outputs <paramref name="ys"/> all in one dtype: their downs as one function
    /// (<see cref="Kernels.FusedOps.DropoutLinearShared"/>: fewer managed functions, whose host time bounds a training
    /// step), drawn with the keys each layer's Down would have drawn, in the layers' order. Then each layer's up.
    /// </summary>
    private static Tensor[] PlusLoraShared(Tensor[] ys, Tensor x, LoraLinear[] layers)
    {
        var dtype = ys[0].dtype;
        var weights = layers.Select(l => l.LoraWeights(dtype)).ToArray();
        var draws = new Kernels.FusedOps.DropoutDraw[layers.Length];
        for (int i = 0; i < layers.Length; i++)
        {
            var draw = DeviceSeededDraw(DropoutTape.Current, x.device) ?? throw new InvalidOperationException("A LoRA dropout draw on the device vanished between the check and the draw.");
            if (DropoutDraws.Current is { } current) current.KernelDraws++;
            draws[i] = new(layers[i].lora_dropout!.p, draw.Seed, draw.Key);
        }
        var downs = Kernels.FusedOps.DropoutLinearShared(InDtype(x, dtype), [.. weights.Select(w => w.A)], draws); // (..., r) each
        return [.. ys.Select((y, i) => layers[i].PlusUp(y, downs[i], weights[i].B))];
    }

    /// <summary>Whether <see cref="Down"/> would take the kernels' draw on <paramref name="device"/> now (draws nothing).</summary>
    private bool DrawsOnDevice(Device device) =>
        AdapterActive && training && lora_dropout!.p != 0 && DropoutGenerator is null && device.type == DeviceType.CUDA
        && (DropoutTape.Current is { Replaying: true } replaying ? replaying.Tape.HasDraws : DrawsAvailable(device));

    /// <summary>
    /// A(dropout(h)) = linear(dropout(h), a) (..., r). Where the kernels draw the mask (<see cref="DeviceSeededDraw"/>: a
    /// training micro-batch on a GPU) one function does both (<see cref="Kernels.FusedOps.DropoutLinear"/>): where gradients
    /// flow it keeps h rather than the dropped copy a's gradient needs, and draws that again in backward from the same
    /// (seed, key). A checkpointed layer's recompute replays the draw of its first pass, as before. Else <see cref="Dropout"/>.
    /// </summary>
    private Tensor Down(Tensor h, Tensor a)
    {
        if (KernelDraw(h.device) is { } draw) return Kernels.FusedOps.DropoutLinear(h, a, lora_dropout!.p, draw.Seed, draw.Key);
        return nn.functional.linear(Dropout(h), a);
    }

    /// <summary>The draw of this layer's LoRA dropout mask by the kernels on <paramref name="device"/> (a training micro-batch on a GPU); null where torch's dropout draws it.</summary>
    private (Tensor Seed, long Key)? KernelDraw(Device device)
    {
        if (!training || lora_dropout!.p == 0 || DropoutGenerator is not null || device.type != DeviceType.CUDA
            || DeviceSeededDraw(DropoutTape.Current, device) is not { } draw) return null;
        if (DropoutDraws.Current is { } current) current.KernelDraws++;
        return draw;
    }

    /// <summary>
    /// forward(silu(gate)·up) for the MLP's down projection (..., out). Where this layer's LoRA dropout takes the kernels'
    /// draw, the product and LoRA's A of it are one function (<see cref="Kernels.FusedOps.SiluMulDropoutLinear"/>) that keeps
    /// gate and up, which SiLU·up's backward needs anyway, instead of the product too: the product is the widest
    /// activation of a layer. The base matmul's graph keeps no input (its weight is frozen). gate and up: the MLP's fresh
    /// projections, which nothing else reads or keeps, so backward writes their gradients over them (SiluMul's
    /// gradientsInPlace).
    /// </summary>
    public Tensor ForwardOfSiluMul(Tensor gate, Tensor up)
    {
        if (!AdapterActive || gate.dtype != OutputDtype || up.dtype != gate.dtype || KernelDraw(gate.device) is not { } draw)
            return forward(Kernels.FusedOps.SiluMul(gate, up, gradientsInPlace: true));
        using var scope = NewDisposeScope();
        var (a, b) = LoraWeights(gate.dtype);                                                       // (r, in), (out, r)
        var (h, down) = Kernels.FusedOps.SiluMulDropoutLinear(gate, up, a, lora_dropout!.p, draw.Seed, draw.Key, gradientsInPlace: true);
        var y = BaseForward(h);                                                                     // (..., out), bias included
        return scope.MoveToOuter(PlusUp(y, down, b));
    }

    /// <summary>
    /// Each layer's forward(x) for projections of one input (an attention layer's q/k/v). Where every layer holds its base
    /// weight as NF4 in one compute dtype, x has more than one row (no matrix-vector kernel) and the base matmul needs no
    /// autograd function (gradients off, or a checkpointed layer's recompute, as <see cref="Nf4Forward"/>), the weights are
    /// dequantized into one (Σout, in) buffer and multiplied at once, biases included: one matmul and one backward matmul
    /// instead of one per layer, and fewer host calls (a training step is bound by them). Each output is its column block of
    /// that product plus its own LoRA path, as forward adds it. Where every layer's LoRA dropout takes the kernels' draws (a
    /// training micro-batch on a GPU: <see cref="DrawsOnDevice"/>), their dropouts and A's are one function
    /// (<see cref="PlusLoraShared"/>) instead of one a layer, after the base matmuls. Otherwise each layer's own forward.
    /// </summary>
    public static Tensor[] ForwardShared(Tensor x, params LoraLinear[] layers) => ForwardShared(x, null, layers);

    /// <summary>
    /// <see cref="ForwardShared(Tensor, LoraLinear[])"/> where dense base weights stacked in <paramref name="stacked"/>
    /// run as one matmul (<see cref="StackedLinear.BaseOutputs"/>), gradients flowing or not; each output is then its
    /// block plus its own LoRA path as above.
    /// </summary>
    public static Tensor[] ForwardShared(Tensor x, StackedLinear? stacked, params LoraLinear[] layers)
    {
        bool downsShared = layers.Length > 1 && layers.All(l => l.DrawsOnDevice(x.device) && l.OutputDtype == layers[0].OutputDtype);
        if (!CanShare(x, layers))
        {
            using var layerScope = NewDisposeScope();
            var bases = x.numel() != layers[0].InFeatures ? stacked?.BaseOutputs(x) : null;      // one row: each layer's own (decode)
            Tensor[] results;
            if (downsShared) results = PlusLoraShared(bases ?? [.. layers.Select(l => l.BaseForward(x))], x, layers);
            else if (bases is null) results = [.. layers.Select(l => l.forward(x))];
            else results = [.. bases.Select((y, i) => layers[i].AdapterActive ? layers[i].PlusLora(y, x) : y)];
            foreach (var result in results) layerScope.MoveToOuter(result);
            return results;
        }
        using var scope = NewDisposeScope();
        var input = InDtype(x, layers[0].ComputeDtype);
        Tensor y;                                                               // (..., Σout)
        if (!is_grad_enabled() || !input.requires_grad || GradientCheckpoint.Recomputing)
        {
            // No gradient, or a checkpointed layer's recompute: a plain matmul, whose graph keeps the weight until this layer's backward.
            using var weight = DequantizedShared(layers);                       // (Σout, in)
            using var bias = SharedBias(layers, weight.dtype);
            y = nn.functional.linear(input, weight, bias);
        }
        else y = Nf4SharedLinear.apply(input, layers);                          // dequantizes again in backward
        var outputs = new Tensor[layers.Length];
        long column = 0;
        for (int i = 0; i < layers.Length; i++)
        {
            var block = y.narrow(-1, column, layers[i].OutFeatures);            // (..., out): a view, rows Σout apart
            outputs[i] = layers[i].AdapterActive && !downsShared ? layers[i].PlusLora(block, x) : block;
            column += layers[i].OutFeatures;
        }
        if (downsShared) outputs = PlusLoraShared(outputs, x, layers);
        foreach (var output in outputs) scope.MoveToOuter(output);
        return outputs;
    }

    /// <summary>The layers' NF4 weights dequantized one under the other into one (Σout, in) buffer. Caller owns it.</summary>
    internal static Tensor DequantizedShared(LoraLinear[] layers)
    {
        using var _ = no_grad();
        var first = layers[0];
        var weight = empty([layers.Sum(l => (long)l.OutFeatures), first.InFeatures], first.ComputeDtype, first.weight_nf4!.device);
        long row = 0;
        foreach (var layer in layers)
        {
            using var block = weight.narrow(0, row, layer.OutFeatures);        // (out, in), contiguous
            if (!Kernels.FusedOps.Nf4DequantizeInto(layer.QuantizedState!, block))
            {
                using var dequantized = layer.DequantizedForCompute();
                block.copy_(dequantized);
            }
            row += layer.OutFeatures;
        }
        return weight;
    }

    /// <summary>The layers' biases one after the other (Σout) in <paramref name="dtype"/>, or null where they have none. Caller owns it.</summary>
    internal static Tensor? SharedBias(LoraLinear[] layers, ScalarType dtype) =>
        layers[0].bias is null ? null : cat([.. layers.Select(l => InDtype(l.bias!, dtype))], 0);

    private static bool CanShare(Tensor x, LoraLinear[] layers)
    {
        if (layers.Length < 2) return false;
        var first = layers[0];
        foreach (var layer in layers)
            if (layer.weight is not null || layer.weight_nf4 is null || layer.ComputeDtype != first.ComputeDtype || layer.InFeatures != first.InFeatures
                || (layer.bias is null) != (first.bias is null))
                return false;
        return x.numel() != first.InFeatures;                                   // one row: the matrix-vector kernel
    }

    /// <summary>t itself when it is in <paramref name="dtype"/> already: even a cast to its own dtype is a native call.</summary>
    private static Tensor InDtype(Tensor t, ScalarType dtype) => t.dtype == dtype ? t : t.to(dtype);

    /// <summary>
    /// lora_A (r, in) and lora_B (out, r) in the dtype of this layer's output, set for a training run by
    /// <see cref="FineTune.Engine.Training.AdapterWorkingCopies"/>: cast from the fp32 weights once per optimizer step.
    /// They are leaves of their own: their gradients (the same values the casts' backward would pass on) are added to
    /// the fp32 weights' gradients after each backward. Null: the fp32 weights are cast where they are used.
    /// </summary>
    internal (Tensor A, Tensor B)? ComputeCopies { get; set; }

    /// <summary>The dtype of this layer's output: the dense weight's, or the NF4 weight's compute dtype.</summary>
    internal ScalarType OutputDtype => weight?.dtype ?? ComputeDtype;

    /// <summary>
    /// LoRA dropout (nn.Dropout, as PEFT's lora_dropout) where the kernels do not draw the mask (<see cref="Down"/> takes
    /// that case: a training micro-batch on a GPU, a mask drawn from the micro-batch's device seed and a key, capturable in
    /// a CUDA graph). On CUDA with the device's generator: torch's fused dropout, one
    /// kernel; inside a checkpointed layer each draw first seeds the device's generator with a seed from the layer's
    /// <see cref="DropoutTape"/>, and the recompute seeds it the same way, so both passes draw the same mask without
    /// keeping it. With an explicit <see cref="DropoutGenerator"/> (CPU): a bernoulli mask from that generator, recorded
    /// on the tape and replayed.
    /// </summary>
    private Tensor Dropout(Tensor h)
    {
        double p = lora_dropout!.p;
        if (!training || p == 0) return h;
        var tape = DropoutTape.Current;
        if (DropoutGenerator is null && h.device_type == DeviceType.CUDA)
        {
            if (tape is { } t) DropoutTape.SeedDevice(h.device, t.Replaying ? t.Tape.ReplayedSeed() : t.Tape.NewSeed());
            return nn.functional.dropout(h, p, training: true);
        }
        if (tape is { Replaying: true })
        {
            using var recorded = tape.Value.Tape.Next();                        // (..., in) bool
            return (h * recorded).DividedBy(1 - p);
        }
        if (DropoutGenerator is null && tape is not { Tape.KeepsMasks: true }) return lora_dropout.forward(h);
        var keep = empty_like(h).bernoulli_(1 - p, DropoutGenerator);           // (..., in) of 0/1
        tape?.Tape.Add(keep);
        return (h * keep).DividedBy(1 - p);
    }

    /// <summary>
    /// The (device seed, key) of this dropout's mask where the kernels draw it (<see cref="DropoutDraws"/>): a checkpointed
    /// layer's recompute replays the recorded one; else the micro-batch's next key, recorded on the layer's tape. Null
    /// where the trainer set no draws (not a training micro-batch on a GPU) or the kernels are off there.
    /// </summary>
    private static (Tensor Seed, long Key)? DeviceSeededDraw((DropoutTape Tape, bool Replaying)? tape, Device device)
    {
        if (tape is { Replaying: true } replaying) return replaying.Tape.ReplayedDraw();
        if (!DrawsAvailable(device)) return null;
        var draws = DropoutDraws.Current!;
        var draw = (draws.Seed, draws.NextKey());
        tape?.Tape.AddDraw(draw);
        return draw;
    }

    /// <summary>Whether this thread's <see cref="DropoutDraws"/> draw on <paramref name="device"/>: set there, and the kernels on.</summary>
    private static bool DrawsAvailable(Device device) =>
        DropoutDraws.Current is { } draws && draws.Seed.device_type == device.type && draws.Seed.device_index == Math.Max(0, device.index)
        && Kernels.CudaKernels.On(device);

    /// <summary>
    /// x·dequant(W)ᵀ for the NF4 base weight. Where no gradient flows (generation, a checkpointed layer's first pass):
    /// the NF4 matrix-vector kernel for one row, else the weight dequantized for one matmul. In a checkpointed layer's
    /// backward recompute: a plain matmul, whose graph keeps the dequantized weight only until this layer's backward
    /// runs, right after. Otherwise <see cref="Nf4Linear"/>, which dequantizes again in backward instead of keeping it.
    /// </summary>
    private Tensor Nf4Forward(Tensor x)
    {
        if (!is_grad_enabled() || !x.requires_grad)
        {
            using var _ = no_grad();
            if (Kernels.FusedOps.Nf4MatVec(x, QuantizedState!) is { } y) return bias is null ? y : y.Plus(InDtype(bias, y.dtype));
            using var w = DequantizedForCompute();                               // (out, in)
            return nn.functional.linear(x, w, BiasFor(w));
        }
        if (GradientCheckpoint.Recomputing)
        {
            using var w = DequantizedForCompute();                               // (out, in), kept by the graph until backward
            return nn.functional.linear(x, w, BiasFor(w));
        }
        return Nf4Linear.apply(x, this);
    }

    /// <summary>The bias in the dequantized weight's dtype for one matmul with it (bitsandbytes' MatMul4Bit passes it to linear too).</summary>
    internal Tensor? BiasFor(Tensor w) => bias is null ? null : InDtype(bias, w.dtype);

    /// <summary>The base weight dequantized in the compute dtype, for the NF4 matmul's forward and backward.</summary>
    internal Tensor DequantizedForCompute() => Nf4.Dequantize(QuantizedState!, ComputeDtype);

    private void ReleaseQuantized()
    {
        foreach (var name in new[] { nameof(weight_nf4), nameof(weight_absmax_codes), nameof(weight_absmax_nested), nameof(weight_absmax_offset), nameof(weight_absmax) })
            if (_internal_buffers.ContainsKey(name)) _internal_buffers.Remove(name);
        weight_nf4?.Dispose();
        weight_absmax_codes?.Dispose();
        weight_absmax_nested?.Dispose();
        weight_absmax_offset?.Dispose();
        weight_absmax?.Dispose();
        weight_nf4 = weight_absmax_codes = weight_absmax_nested = weight_absmax_offset = weight_absmax = null;
    }

    private static void CheckShape(Tensor source, long[] expected, string what)
    {
        if (!source.shape.SequenceEqual(expected))
            throw new ArgumentException($"The checkpoint's {what} has shape [{string.Join(", ", source.shape)}], but the layer expects [{string.Join(", ", expected)}]. The config.json and the weights disagree.");
    }

    protected override void Dispose(bool disposing)
    {
        if (disposing) ReleaseQuantized();
        base.Dispose(disposing);
    }
}

/// <summary>
/// y = x·dequant(W)ᵀ with the NF4 weight dequantized again in backward instead of kept
/// (bitsandbytes MatMul4Bit). The base weight is frozen, so only dx flows back.
/// </summary>
internal sealed class Nf4Linear : autograd.SingleTensorFunction<Nf4Linear>
{
    public override string Name => nameof(Nf4Linear);

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var x = (Tensor)vars[0];
        var layer = (LoraLinear)vars[1];
        ctx.save_data("layer", layer);
        // No graph inside: the dequantized weight must not be kept alive by an inner autograd node
        // (it was, and QLoRA memory grew with every step); backward dequantizes it again.
        using var _ = no_grad();
        using var scope = NewDisposeScope();
        using var w = layer.DequantizedForCompute();                             // (out, in)
        return scope.MoveToOuter(nn.functional.linear(x, w, layer.BiasFor(w))); // the bias inside, as the plain matmul paths
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
    {
        var layer = (LoraLinear)ctx.get_data("layer");
        using var _ = no_grad();
        using var w = layer.DequantizedForCompute();                             // (out, in)
        var dx = matmul(gradOutput.to(w.dtype), w);                              // (..., in)
        return [dx, null!];                                                      // no gradient for the layer argument
    }
}

/// <summary>
/// <see cref="Nf4Linear"/> for several layers of one input (<see cref="LoraLinear.ForwardShared"/>): y = x·Wᵀ + b with W
/// the layers' NF4 weights dequantized one under the other, again in backward instead of kept. Only dx flows back.
/// </summary>
internal sealed class Nf4SharedLinear : autograd.SingleTensorFunction<Nf4SharedLinear>
{
    public override string Name => nameof(Nf4SharedLinear);

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var x = (Tensor)vars[0];
        var layers = (LoraLinear[])vars[1];
        ctx.save_data("layers", layers);
        using var _ = no_grad();
        using var w = LoraLinear.DequantizedShared(layers);                      // (Σout, in)
        using var bias = LoraLinear.SharedBias(layers, w.dtype);
        return nn.functional.linear(x, w, bias);
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor gradOutput)
    {
        var layers = (LoraLinear[])ctx.get_data("layers");
        using var _ = no_grad();
        using var w = LoraLinear.DequantizedShared(layers);                      // (Σout, in)
        var dx = matmul(gradOutput.to(w.dtype), w);                              // (..., in)
        return [dx, null!];
    }
}
