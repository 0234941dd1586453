using FineTune.Engine.Backend;
using FineTune.Engine.Generation;
using FineTune.Engine.Kernels;
using FineTune.Engine.Models;
using static TorchSharp.torch;
using static FineTune.Tests.Kernels.TensorEquality;

namespace FineTune.Tests.Generation;

public class KvCacheTests
{
    public KvCacheTests() => _ = ComputeBackend.Current;

    private static (Tensor Cos, Tensor SignedSin) Tables(long first, long count, int d)
    {
        using var rope = new RotaryEmbedding(d, new RopeSettings(10000.0), CPU);
        var (cos, sin) = rope.Compute(arange(first, first + count, dtype: ScalarType.Int64).unsqueeze(0), ScalarType.Float32);
        return AttentionOps.RotaryTables(cos, sin);
    }

    [Fact]
    public void Rotate_and_update_is_rope_on_q_and_k_then_the_store_of_k_and_v()
    {
        using var scope = NewDisposeScope();
        using var cache = new KvCache(layers: 1, capacity: 6);
        using var reference = new KvCache(layers: 1, capacity: 6);
        foreach (var (first, t) in new[] { (0L, 3L), (3L, 1L), (4L, 1L) }) // a prompt, then two decode steps
        {
            var q = randn(1, 4, t, 8);
            var k = randn(1, 2, t, 8);
            var v = randn(1, 2, t, 8);
            var (cos, signedSin) = Tables(first, t, 8);
            var (rotated, keys, values) = cache.RotateAndUpdate(0, q, k, v, cos, signedSin);
            var (expectedKeys, expectedValues) = reference.Update(0, AttentionOps.ApplyRotary(k, cos, signedSin), v);
            Assert.True(Same(rotated, AttentionOps.ApplyRotary(q, cos, signedSin)));
            Assert.True(Same(keys, expectedKeys));
            Assert.True(Same(values, expectedValues));
            Assert.Equal(first + t, keys.shape[2]);
            cache.Advance((int)t);
            reference.Advance((int)t);
        }
    }

    [Fact]
    public void Stacked_q_k_v_of_one_position_are_taken_apart_as_the_separate_projections()
    {
        using var scope = NewDisposeScope();
        using var cache = new KvCache(layers: 2, capacity: 4);
        using var reference = new KvCache(layers: 2, capacity: 4);
        var qkv = randn(2, 1, (4 + 2 * 2) * 8);                                 // (B, 1, (nH + 2·nKV)·hD)
        var q = qkv.narrow(2, 0, 32).view(2, 4, 1, 8);
        var k = qkv.narrow(2, 32, 16).view(2, 2, 1, 8);
        var v = qkv.narrow(2, 48, 16).view(2, 2, 1, 8);
        var (cos, signedSin) = Tables(0, 1, 8);
        var (rotated, keys, values) = cache.RotateAndUpdate(1, qkv, 4, 2, cos, signedSin);
        var (expectedQ, expectedKeys, expectedValues) = reference.RotateAndUpdate(1, q, k, v, cos, signedSin);
        Assert.True(Same(rotated, expectedQ));
        Assert.True(Same(keys, expectedKeys));
        Assert.True(Same(values, expectedValues));
        Assert.Throws<ArgumentException>(() => cache.RotateAndUpdate(0, randn(2, 1, 60), 4, 2, cos, signedSin));
    }
}
