using FineTune.Engine.Adapters;
using FineTune.Engine.Models;
using FineTune.Engine.Training;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FineTune.Tests.Training;

#pragma warning disable IDE1006 // names equal HF checkpoint keys

/// <summary>
/// A small decoder for engine tests (until the fixture models land): HF-like module names
/// (model.layers.N.self_attn.q_proj, ..., lm_head), learned positions read from position_ids, and
/// attention that honours a (B, 1, T, T) mask, so packing and LoRA behave as on a real model.
/// </summary>
internal sealed class TinyCausalLM : nn.Module, ITrainableCausalLM
{
    public readonly TinyBody model;
    public readonly LoraLinear lm_head;

    public TinyCausalLM(int vocab = 64, int hidden = 32, int layers = 2, int heads = 4, int maxPositions = 256, int seed = 7)
        : base(nameof(TinyCausalLM))
    {
        // Its own generator: the same weights every time, whatever other tests do with torch's global RNG.
        using var g = new Generator((ulong)seed);
        model = new TinyBody(vocab, hidden, layers, heads, maxPositions, g);
        lm_head = new LoraLinear(hidden, vocab, hasBias: false);
        using (no_grad()) lm_head.LoadWeight(randn([vocab, hidden], generator: g) * 0.2);
        RegisterComponents();
        foreach (var p in parameters()) p.requires_grad_(false);
        eval();
    }

    public nn.Module Module => this;
    public LoraLinear LmHead => lm_head;

    public bool GradientCheckpointing
    {
        get => false;
        set { if (value) throw new NotSupportedException("TinyCausalLM keeps every activation; use a fixture CausalLM to test checkpointing."); }
    }

    public Tensor HiddenStates(Tensor inputIds, Tensor positionIds, Tensor? attentionMask, PackedSequences? packed) =>
        model.forward(inputIds, positionIds, attentionMask);

    public IEnumerable<(string Name, LoraLinear Layer)> NamedLinears() =>
        named_modules().Where(m => m.module is LoraLinear).Select(m => (m.name, (LoraLinear)m.module));

    /// <summary>Full logits (B, T, V) for generation in tests.</summary>
    public Tensor Logits(Tensor inputIds)
    {
        using var scope = NewDisposeScope();
        long T = inputIds.shape[1];
        var positions = arange(T, dtype: ScalarType.Int64).unsqueeze(0).expand(inputIds.shape[0], T);
        return scope.MoveToOuter(lm_head.forward(HiddenStates(inputIds, positions, null, null)));
    }

    /// <summary>Greedy continuation until EOS or <paramref name="maxNew"/> tokens.</summary>
    public List<int> Greedy(IReadOnlyList<int> prompt, int eos, int maxNew)
    {
        using var _ = no_grad();
        var ids = prompt.ToList();
        var generated = new List<int>();
        for (int i = 0; i < maxNew; i++)
        {
            using var scope = NewDisposeScope();
            var logits = Logits(tensor(ids.Select(v => (long)v).ToArray(), [1, ids.Count]));
            int next = (int)logits[0, -1].argmax().item<long>();
            if (next == eos) break;
            ids.Add(next);
            generated.Add(next);
        }
        return generated;
    }
}

internal sealed class TinyBody : nn.Module
{
    public readonly Embedding embed_tokens;
    public readonly Embedding embed_positions;
    public readonly ModuleList<TinyBlock> layers;
    public readonly LayerNorm norm;

    public TinyBody(int vocab, int hidden, int layerCount, int heads, int maxPositions, Generator g) : base(nameof(TinyBody))
    {
        embed_tokens = nn.Embedding(vocab, hidden);
        embed_positions = nn.Embedding(maxPositions, hidden);
        using (no_grad())
        {
            embed_tokens.weight!.copy_(randn([vocab, hidden], generator: g));
            embed_positions.weight!.copy_(randn([maxPositions, hidden], generator: g) * 0.1);
        }
        layers = nn.ModuleList([.. Enumerable.Range(0, layerCount).Select(_ => new TinyBlock(hidden, heads, g))]);
        norm = nn.LayerNorm(hidden);
        RegisterComponents();
    }

    public Tensor forward(Tensor inputIds, Tensor positionIds, Tensor? mask)
    {
        using var scope = NewDisposeScope();
        var h = embed_tokens.forward(inputIds) + embed_positions.forward(positionIds); // (B, T, H)
        foreach (var layer in layers) h = layer.forward(h, mask);
        return scope.MoveToOuter(norm.forward(h));
    }
}

internal sealed class TinyBlock : nn.Module
{
    public readonly LayerNorm input_layernorm;
    public readonly TinyAttention self_attn;
    public readonly LayerNorm post_attention_layernorm;
    public readonly TinyMlp mlp;

    public TinyBlock(int hidden, int heads, Generator g) : base(nameof(TinyBlock))
    {
        input_layernorm = nn.LayerNorm(hidden);
        self_attn = new TinyAttention(hidden, heads, g);
        post_attention_layernorm = nn.LayerNorm(hidden);
        mlp = new TinyMlp(hidden, g);
        RegisterComponents();
    }

    public Tensor forward(Tensor h, Tensor? mask)
    {
        using var scope = NewDisposeScope();
        h = h + self_attn.forward(input_layernorm.forward(h), mask);
        h = h + mlp.forward(post_attention_layernorm.forward(h));
        return scope.MoveToOuter(h);
    }
}

internal sealed class TinyAttention : nn.Module
{
    public readonly LoraLinear q_proj, k_proj, v_proj, o_proj;
    private readonly int _heads;

    public TinyAttention(int hidden, int heads, Generator g) : base(nameof(TinyAttention))
    {
        _heads = heads;
        q_proj = Dense(hidden, hidden, bias: true, g);
        k_proj = Dense(hidden, hidden, bias: true, g);
        v_proj = Dense(hidden, hidden, bias: true, g);
        o_proj = Dense(hidden, hidden, bias: false, g);
        RegisterComponents();
    }

    internal static LoraLinear Dense(int inF, int outF, bool bias, Generator g)
    {
        var layer = new LoraLinear(inF, outF, bias);
        using var scope = NewDisposeScope();
        layer.LoadWeight(randn([outF, inF], generator: g) * (1.0 / Math.Sqrt(inF)));
        if (bias) layer.LoadBias(randn([outF], generator: g) * 0.02);
        return layer;
    }

    public Tensor forward(Tensor x, Tensor? mask)
    {
        using var scope = NewDisposeScope();
        long B = x.shape[0], T = x.shape[1], H = x.shape[2], hD = H / _heads;
        var q = q_proj.forward(x).view(B, T, _heads, hD).transpose(1, 2); // (B, nH, T, hD)
        var k = k_proj.forward(x).view(B, T, _heads, hD).transpose(1, 2); // (B, nH, T, hD)
        var v = v_proj.forward(x).view(B, T, _heads, hD).transpose(1, 2); // (B, nH, T, hD)
        var scores = q.matmul(k.transpose(2, 3)).to(ScalarType.Float32) / Math.Sqrt(hD); // (B, nH, T, T)
        var allowed = mask ?? ones(T, T, dtype: ScalarType.Bool, device: x.device).tril().view(1, 1, T, T);
        scores = scores.masked_fill(allowed.logical_not(), float.NegativeInfinity);
        var attn = scores.softmax(-1).to(v.dtype).matmul(v);                              // (B, nH, T, hD)
        var y = attn.transpose(1, 2).reshape(B, T, H);                                  // (B, T, H)
        return scope.MoveToOuter(o_proj.forward(y));
    }
}

internal sealed class TinyMlp : nn.Module
{
    public readonly LoraLinear up_proj, down_proj;

    public TinyMlp(int hidden, Generator g) : base(nameof(TinyMlp))
    {
        up_proj = TinyAttention.Dense(hidden, hidden * 2, bias: false, g);
        down_proj = TinyAttention.Dense(hidden * 2, hidden, bias: false, g);
        RegisterComponents();
    }

    public Tensor forward(Tensor x)
    {
        using var scope = NewDisposeScope();
        return scope.MoveToOuter(down_proj.forward(nn.functional.gelu(up_proj.forward(x))));
    }
}
#pragma warning restore IDE1006
