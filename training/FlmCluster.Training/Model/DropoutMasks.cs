using FlmCluster.Training.Data;
using static TorchSharp.torch;

namespace FlmCluster.Training.Model;

/// <summary>Where a dropout mask applies; part of the mask's key.</summary>
public enum DropoutSite
{
    Embedding = 1,
    AttentionProbabilities = 2,
    AttentionOutput = 3,
    MlpOutput = 4,
}

/// <summary>
/// Dropout masks of one micro-batch, each element a pure function of (train seed, global sample index, layer,
/// site, position within the sample; for attention probabilities the global head too). Keyed this way, and not
/// by a generator's state, every layout draws the same mask for the same element: a sample has the same index
/// whichever DP rank or micro-batch reads it, TP ranks compute identical masks for replicated activations and the
/// global heads' masks for their split of the attention probabilities, and a replay or a resume redraws the same
/// masks. The global sample index never repeats (epoch e covers indices [eN, (e+1)N)), so later epochs get new
/// masks without a step term. Bits come from a counter-based hash evaluated with int64 torch ops on the tensor's
/// device, so CPU and CUDA give the same masks.
/// </summary>
public sealed class DropoutMasks
{
    private const ulong Domain = 0x64726F706F7574UL; // "dropout": separates these keys from other uses of the seed
    private const long Low32 = 0xFFFFFFFFL;
    private const double TwoTo32 = 4294967296.0;

    private readonly ulong[] _sampleKeys;

    /// <param name="seed">The job's train seed.</param>
    /// <param name="samples">Global sample index of each row of the micro-batch, in order.</param>
    public DropoutMasks(ulong seed, IReadOnlyList<long> samples)
    {
        var root = SampleOrder.Mix(seed ^ Domain);
        _sampleKeys = samples.Select(s => SampleOrder.Mix(root ^ (ulong)s)).ToArray();
    }

    /// <summary>
    /// The masks for a module with rate <paramref name="p"/>: null when dropout is off (eval, or p = 0), and an
    /// error when it is on but the caller gave no sample indices (there is no unkeyed fallback).
    /// </summary>
    public static DropoutMasks? For(DropoutMasks? masks, bool training, double p) =>
        !training || p == 0 ? null
        : masks ?? throw new InvalidOperationException("dropout in training needs the global sample indices of the batch");

    /// <summary>x · keep / (1 − p) for x of shape [batch, …] (for attention probabilities [batch, local heads, q, k]).</summary>
    /// <param name="firstHead">Global index of x's first head (attention probabilities only).</param>
    public Tensor Apply(Tensor x, double p, int layer, DropoutSite site, long firstHead = 0)
    {
        using var drop = Keep(x.shape, p, layer, site, firstHead, x.device).logical_not_();
        return x.masked_fill(drop, 0).mul(1.0 / (1.0 - p));
    }

    /// <summary>
    /// Boolean keep mask of the given shape: element (b, …) is kept when its hash, read as a uniform u in [0, 1)
    /// (u = h / 2³²), is at least p. Rows are samples; for attention probabilities rows and heads take their own
    /// key and the position counts within the head's [q, k] matrix, elsewhere it counts within the sample.
    /// </summary>
    public Tensor Keep(long[] shape, double p, int layer, DropoutSite site, long firstHead, Device device)
    {
        if (p is < 0 or >= 1)
            throw new ArgumentOutOfRangeException(nameof(p));
        if (shape.Length < 2 || shape[0] != _sampleKeys.Length)
            throw new ArgumentException($"shape [{string.Join(", ", shape)}] does not start with the {_sampleKeys.Length} samples of the batch");
        var keyDims = site == DropoutSite.AttentionProbabilities ? 2 : 1;
        if (shape.Length <= keyDims)
            throw new ArgumentException($"shape [{string.Join(", ", shape)}] has no positions to mask");
        var heads = keyDims == 2 ? shape[1] : 1;
        var positions = shape.Skip(keyDims).Aggregate(1L, (a, b) => a * b);
        if (positions > 1L << 32)
            throw new ArgumentException($"{positions} positions per key exceed the 32-bit counter");

        var lo = new long[_sampleKeys.Length * heads];
        var hi = new long[lo.Length];
        for (var b = 0; b < _sampleKeys.Length; b++)
        {
            var siteKey = SampleOrder.Mix(_sampleKeys[b] ^ ((ulong)(uint)layer << 8 | (ulong)site));
            for (var head = 0; head < heads; head++)
            {
                var key = keyDims == 2 ? SampleOrder.Mix(siteKey ^ (ulong)(firstHead + head)) : siteKey;
                lo[b * heads + head] = (long)(key & Low32);
                hi[b * heads + head] = (long)(key >> 32);
            }
        }
        var keyShape = shape.Select((n, i) => i < keyDims ? n : 1).ToArray();
        using var keyLo = tensor(lo, keyShape, dtype: ScalarType.Int64, device: device);
        using var keyHi = tensor(hi, keyShape, dtype: ScalarType.Int64, device: device);
        using var count = arange(positions, dtype: ScalarType.Int64, device: device);
        using var counter = count.view(shape.Skip(keyDims).ToArray());
        using var sixteen = tensor(16L, dtype: ScalarType.Int64, device: device);
        using var low32 = tensor(Low32, dtype: ScalarType.Int64, device: device);

        // Two keyed rounds, h = H(H(position ^ lo) ^ hi): different keys give unrelated masks, not shifted copies.
        using var h = counter.bitwise_xor(keyLo);
        Hash32(h, sixteen, low32);
        h.bitwise_xor_(keyHi);
        Hash32(h, sixteen, low32);
        return h.ge((long)Math.Ceiling(p * TwoTo32));
    }

    /// <summary>
    /// In place on values in [0, 2³²): a 32-bit integer finaliser (multiplier 0x45d9f3b). The multiplier is below
    /// 2²⁷, so no product leaves int64 and the right shifts see non-negative values (torch's int64 shift is arithmetic).
    /// </summary>
    private static void Hash32(Tensor h, Tensor sixteen, Tensor low32)
    {
        for (var round = 0; round < 2; round++)
        {
            using (var shifted = h.bitwise_right_shift(sixteen))
                h.bitwise_xor_(shifted);
            h.mul_(0x45D9F3BL).bitwise_and_(low32);
        }
        using var last = h.bitwise_right_shift(sixteen);
        h.bitwise_xor_(last);
    }
}
