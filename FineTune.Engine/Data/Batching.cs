using FineTune.Engine.Models;
using static TorchSharp.torch;

namespace FineTune.Engine.Data;

/// <summary>How rows of a batch are laid out.</summary>
public enum BatchLayout
{
    /// <summary>All rows of a batch in one sequence, positions restarting per row and attention kept inside each row
    /// (block-diagonal causal mask): no padding at all (HF DataCollatorWithFlattening).</summary>
    Packed,
    /// <summary>One row per sequence, padded to the longest in the batch; batches drawn from length-sorted groups
    /// (HF group_by_length) so little padding is wasted.</summary>
    LengthGrouped,
}

/// <summary>The training and validation examples.</summary>
public sealed record DataSplit(IReadOnlyList<TrainingExample> Train, IReadOnlyList<TrainingExample> Validation);

/// <summary>
/// Tensors for one micro-batch. Targets are already shifted (see <see cref="TrainingExample"/>); padding has
/// target -100. AttentionMask is (B, 1, T, T) bool (true = may attend) or null for plain causal attention.
/// TargetPositions are the flat (b·T + t) positions whose target is not -100, found on the host so the loss needs
/// no device-to-host read (a nonzero() on the device would stall the queue once per micro-batch).
/// </summary>
/// <summary>
/// What a batch's tensors' shapes depend on, and what a CUDA graph of its step bakes in: (Rows, Tokens) ids, a block mask
/// or none, the target count, and the sequences in it with the longest one's length (flash attention's launch).
/// </summary>
public readonly record struct BatchShape(int Rows, int Tokens, bool Masked, int Targets, int Sequences, int Longest);

public sealed class TrainingBatch(Tensor inputIds, Tensor positionIds, Tensor targets, Tensor? attentionMask, int tokenCount, int targetCount, Tensor targetPositions,
    PackedSequences? packed = null) : IDisposable
{
    public Tensor TargetPositions { get; } = targetPositions; // (N) int64, N = TargetCount
    public Tensor InputIds { get; } = inputIds;            // (B, T) int64
    public Tensor PositionIds { get; } = positionIds;      // (B, T) int64
    public Tensor Targets { get; } = targets;              // (B, T) int64
    public Tensor? AttentionMask { get; } = attentionMask; // (B, 1, T, T) bool
    public PackedSequences? Packed { get; } = packed;      // the packed rows the block mask holds (B = 1), else null
    public int TokenCount { get; } = tokenCount;           // real (non-padding) tokens
    public int TargetCount { get; } = targetCount;         // positions with a loss

    /// <summary>The shape of this batch's tensors (<see cref="Batching.ShapeOf"/> tells it before collating).</summary>
    public BatchShape Shape => new((int)InputIds.shape[0], (int)InputIds.shape[1], AttentionMask is not null, (int)TargetPositions.shape[0],
        Packed is null ? (int)InputIds.shape[0] : (int)Packed.Starts.shape[0] - 1, Packed?.Longest ?? (int)InputIds.shape[1]);

    public void Dispose()
    {
        InputIds.Dispose();
        PositionIds.Dispose();
        Targets.Dispose();
        AttentionMask?.Dispose();
        Packed?.Dispose();
        TargetPositions.Dispose();
    }
}

public static class Batching
{
    /// <summary>Fewer rows than this train without a validation split.</summary>
    public const int MinimumRowsForValidation = 20;

    /// <summary>
    /// How many of <paramref name="rows"/> rows <see cref="Split"/> keeps for validation: round(rows × fraction)
    /// (to even, as Math.Round), at least 1; none when the fraction is 0 or there are fewer than <paramref name="minimumRows"/>.
    /// </summary>
    public static int ValidationCount(int rows, double fraction = 0.1, int minimumRows = MinimumRowsForValidation) =>
        fraction <= 0 || rows < minimumRows ? 0 : Math.Max(1, (int)Math.Round(rows * fraction));

    /// <summary>
    /// Splits off a validation set: <paramref name="fraction"/> of the rows (default 10%) when there are at
    /// least <paramref name="minimumRows"/> (default 20), chosen by a seeded shuffle; otherwise none.
    /// </summary>
    public static DataSplit Split(IReadOnlyList<TrainingExample> examples, int seed, double fraction = 0.1, int minimumRows = MinimumRowsForValidation)
    {
        if (fraction < 0 || fraction >= 1) throw new ArgumentOutOfRangeException(nameof(fraction), fraction, "The validation fraction must be in [0, 1), e.g. 0.1.");
        int validationCount = ValidationCount(examples.Count, fraction, minimumRows);
        if (validationCount == 0) return new DataSplit(examples, []);
        var order = Permutation(examples.Count, seed);
        var validation = order.Take(validationCount).Order().Select(i => examples[i]).ToList();
        var train = order.Skip(validationCount).Order().Select(i => examples[i]).ToList();
        return new DataSplit(train, validation);
    }

    /// <summary>
    /// torch.randperm(n) with a generator seeded by <paramref name="seed"/>: the order accelerate's seedable
    /// sampler draws for epoch e with seed + e, so a Python run can reproduce it.
    /// </summary>
    public static int[] Permutation(int n, long seed)
    {
        if (n == 0) return [];
        using var generator = new Generator((ulong)seed);
        using var perm = randperm(n, generator: generator);
        return [.. perm.data<long>().ToArray().Select(v => (int)v)];
    }

    /// <summary>The example order of one epoch: a permutation seeded with seed + epoch (or the file order when shuffle is off).</summary>
    public static int[] EpochOrder(int count, int seed, int epoch, bool shuffle = true) =>
        shuffle ? Permutation(count, seed + epoch) : [.. Enumerable.Range(0, count)];

    /// <summary>
    /// Groups an epoch's order into batches of <paramref name="batchSize"/> rows (the last may be smaller, as HF's
    /// DataLoader without drop_last). LengthGrouped sorts each run of 50 batches by length, longest first.
    /// </summary>
    public static List<int[]> MakeBatches(IReadOnlyList<TrainingExample> examples, int[] order, int batchSize, BatchLayout layout)
    {
        if (batchSize < 1) throw new ArgumentOutOfRangeException(nameof(batchSize), batchSize, "The batch size must be at least 1.");
        IEnumerable<int> sequence = order;
        if (layout == BatchLayout.LengthGrouped && batchSize > 1)
            sequence = order.Chunk(50 * batchSize).SelectMany(group => group.OrderByDescending(i => examples[i].Length));
        return [.. sequence.Chunk(batchSize)];
    }

    /// <summary>
    /// Whether <see cref="Collate"/> packs <paramref name="rows"/> into one sequence with a block mask (packed rows of
    /// different lengths, or a single row, which needs no mask); else they lie side by side, padded to the longest. Rows of
    /// one length need neither padding nor a block mask: a (B, T) batch with plain causal attention (the fused causal
    /// kernels) is the packed layout's equal without its mask.
    /// </summary>
    private static bool PacksIntoOneRow(IReadOnlyList<TrainingExample> rows, BatchLayout layout)
    {
        bool sameLength = rows.All(r => r.Length == rows[0].Length);
        return (layout == BatchLayout.Packed || rows.Count == 1) && !(sameLength && rows.Count > 1);
    }

    /// <summary>
    /// The length packed rows are padded to where micro-batches should repeat their shapes (for CUDA graphs): n rounded up
    /// to one of <paramref name="perDoubling"/> lengths per doubling (8: at most 12.5% more), at least 64.
    /// </summary>
    public static int BucketLength(int n, int perDoubling = 8)
    {
        if (n <= 64) return 64;
        int step = Math.Max(1, 1 << (System.Numerics.BitOperations.Log2((uint)n) - System.Numerics.BitOperations.Log2((uint)perDoubling)));
        return (n + step - 1) / step * step;
    }

    /// <summary>
    /// Target counts are padded more coarsely than tokens (4 lengths per doubling): each extra one costs only its
    /// share of lm_head and the loss, and with both at 8 the 7B benchmark's 2,000 Q&amp;A rows in micro-batches of 4 rows
    /// gave 60 shapes, the 16 most frequent covering 65% of the micro-batches; at 4, 38 shapes and 82% (8 rows: 23 shapes,
    /// 96%; simulated from tools/bench/reference.py make-data).
    /// </summary>
    private const int TargetBucketsPerDoubling = 4;

    /// <summary>The shape of the batch <see cref="Collate"/> makes of these rows, without making it.</summary>
    public static BatchShape ShapeOf(IReadOnlyList<TrainingExample> examples, IReadOnlyList<int> indices, BatchLayout layout, bool padToBucket = false)
    {
        var rows = indices.Select(i => examples[i]).ToList();
        int targets = rows.Sum(r => r.TargetCount);
        if (padToBucket && layout == BatchLayout.Packed)
        {
            int length = BucketLength(rows.Sum(r => r.Length) + 1);
            return new BatchShape(1, length, Masked: true, BucketLength(targets, TargetBucketsPerDoubling), rows.Count + 1, length);
        }
        return PacksIntoOneRow(rows, layout)
            ? new BatchShape(1, rows.Sum(r => r.Length), Masked: rows.Count > 1, targets, rows.Count > 1 ? rows.Count : 1, rows.Count > 1 ? rows.Max(r => r.Length) : rows[0].Length)
            : new BatchShape(rows.Count, rows.Max(r => r.Length), Masked: false, targets, rows.Count, rows.Max(r => r.Length));
    }

    /// <summary>
    /// Whether packed rows padded to <paramref name="bucket"/> (their <see cref="ShapeOf"/> with padToBucket) can be padded
    /// to <paramref name="shape"/> instead: as many sequences, at least as many tokens and targets. A CUDA graph of the larger
    /// shape then serves them: the padding sequence takes the extra tokens, the extra target positions point at it.
    /// </summary>
    public static bool Fits(BatchShape bucket, BatchShape shape) =>
        bucket.Rows == 1 && shape.Rows == 1 && bucket.Masked && shape.Masked && bucket.Sequences == shape.Sequences
        && bucket.Tokens <= shape.Tokens && bucket.Targets <= shape.Targets && shape.Longest == shape.Tokens;

    /// <summary>
    /// A micro-batch of padded packed <paramref name="shape"/> whose values mean nothing (zeros, every target -100, one-token
    /// sequences before a last long one): what a CUDA graph of that shape is captured from before any rows of that shape
    /// come. Capturing runs nothing, so only the shapes count; each real micro-batch is copied into the captured tensors.
    /// </summary>
    public static TrainingBatch Placeholder(BatchShape shape, Device device)
    {
        if (shape.Rows != 1 || !shape.Masked || shape.Longest != shape.Tokens || shape.Sequences < 1 || shape.Tokens < shape.Sequences)
            throw new ArgumentException($"{shape} is not a padded packed shape.", nameof(shape));
        int length = shape.Tokens;
        int[] lengths = [.. Enumerable.Repeat(1, shape.Sequences - 1), length - (shape.Sequences - 1)];
        return new TrainingBatch(
            zeros([1, length], ScalarType.Int64, device),
            zeros([1, length], ScalarType.Int64, device),
            full([1, length], TrainingExamples.IgnoreIndex, ScalarType.Int64, device),
            BlockCausalMask(lengths, device), tokenCount: 0, targetCount: 0, zeros(shape.Targets, ScalarType.Int64, device),
            PackedSequences.Of(lengths, device, longest: length));
    }

    /// <summary>
    /// Builds the tensors of one micro-batch on <paramref name="device"/>. <paramref name="padToBucket"/> (packed layout):
    /// the rows are packed with one more sequence of padding after them (no targets, attending only itself), to
    /// <see cref="BucketLength"/> of their tokens + 1, and the target positions are repeated up to the bucket length of
    /// their count (4 per doubling; the extra ones point at a padding token, whose target is -100: they add nothing to the loss or its
    /// gradient), so that micro-batches of similar size share one shape and one CUDA graph. <paramref name="padTo"/>: padded
    /// the same way to that shape instead (a CUDA graph's, which holds the rows: <see cref="Fits"/>).
    /// </summary>
    public static TrainingBatch Collate(IReadOnlyList<TrainingExample> examples, IReadOnlyList<int> indices, BatchLayout layout, Device device, int padTokenId = 0,
        bool padToBucket = false, BatchShape? padTo = null)
    {
        var rows = indices.Select(i => examples[i]).ToList();
        int tokenCount = rows.Sum(r => r.Length);
        int targetCount = rows.Sum(r => r.TargetCount);
        bool padded = (padToBucket || padTo is not null) && layout == BatchLayout.Packed;
        if (padded || PacksIntoOneRow(rows, layout))
        {
            // The rows one after the other, and where padded, one more sequence of padding after them to the shape's length.
            var shape = padded ? padTo ?? ShapeOf(examples, indices, layout, padToBucket: true) : (BatchShape?)null;
            if (shape is { } s && !Fits(ShapeOf(examples, indices, layout, padToBucket: true), s))
                throw new ArgumentException($"These {rows.Count} rows ({tokenCount} tokens, {targetCount} targets) do not fit the shape {s}.", nameof(padTo));
            int padding = shape is { } p ? p.Tokens - tokenCount : 0;
            var ids = rows.SelectMany(r => r.InputIds).Select(v => (long)v).Concat(Enumerable.Repeat((long)padTokenId, padding)).ToArray();
            var positions = rows.SelectMany(r => Enumerable.Range(0, r.Length)).Concat(Enumerable.Range(0, padding)).Select(v => (long)v).ToArray();
            var targets = rows.SelectMany(r => r.Targets).Select(v => (long)v).Concat(Enumerable.Repeat((long)TrainingExamples.IgnoreIndex, padding)).ToArray();
            int[] lengths = [.. rows.Select(r => r.Length), .. padding > 0 ? [padding] : Array.Empty<int>()];
            var targetPositions = TargetPositions(targets)
                .Concat(Enumerable.Repeat((long)tokenCount, (shape?.Targets ?? targetCount) - targetCount)).ToArray(); // extra ones: the first padding token
            bool one = lengths.Length == 1;                                         // one row: plain causal attention, no mask
            return new TrainingBatch(
                tensor(ids, [1, ids.Length], device: device),
                tensor(positions, [1, ids.Length], device: device),
                tensor(targets, [1, ids.Length], device: device),
                one ? null : BlockCausalMask(lengths, device), tokenCount, targetCount, tensor(targetPositions, device: device),
                one ? null : PackedSequences.Of(lengths, device, longest: shape?.Tokens));
        }

        int T = rows.Max(r => r.Length), B = rows.Count;
        var idsPadded = new long[B * T];
        var posPadded = new long[B * T];
        var tgtPadded = new long[B * T];
        Array.Fill(idsPadded, padTokenId);
        Array.Fill(tgtPadded, TrainingExamples.IgnoreIndex);
        for (int b = 0; b < B; b++)
        {
            var r = rows[b];
            for (int t = 0; t < r.Length; t++)
            {
                idsPadded[b * T + t] = r.InputIds[t];
                posPadded[b * T + t] = t;
                tgtPadded[b * T + t] = r.Targets[t];
            }
        }
        return new TrainingBatch(
            tensor(idsPadded, [B, T], device: device),
            tensor(posPadded, [B, T], device: device),
            tensor(tgtPadded, [B, T], device: device),
            // Padding sits right of each row's tokens, so causal attention never lets a real token see it: plain causal
            // attention is exact for every position with a target (a padding query's output is never read).
            attentionMask: null, tokenCount, targetCount, tensor(TargetPositions(tgtPadded), device: device));
    }

    /// <summary>(N) int64: the flat indices of the targets that are not -100.</summary>
    private static long[] TargetPositions(long[] flatTargets) =>
        [.. Enumerable.Range(0, flatTargets.Length).Where(i => flatTargets[i] != TrainingExamples.IgnoreIndex).Select(i => (long)i)];

    /// <summary>(1, 1, T, T) bool: causal inside each packed row, nothing across rows.</summary>
    public static Tensor BlockCausalMask(int[] lengths, Device device)
    {
        using var scope = NewDisposeScope();
        var segment = tensor(lengths.SelectMany((len, i) => Enumerable.Repeat((long)i, len)).ToArray(), device: device); // (T)
        int T = lengths.Sum();
        var causal = ones(T, T, dtype: ScalarType.Bool, device: device).tril();      // (T, T)
        var same = segment.unsqueeze(1).eq(segment.unsqueeze(0));                      // (T, T)
        return scope.MoveToOuter(causal.logical_and(same).view(1, 1, T, T));
    }
}
