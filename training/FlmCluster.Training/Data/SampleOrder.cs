namespace FlmCluster.Training.Data;

/// <summary>
/// Maps a global sample index to a training sequence as a pure function of (seed, index): the stream of
/// T tokens is cut into N = ⌊(T−1)/S⌋ windows of S+1 tokens (stride S); epoch e = ⌊i/N⌋ visits the windows
/// in the order of a keyed bijection of [0, N). Any worker can fetch any sample, and every window is used
/// exactly once per epoch whatever the layout, growth stage or restart.
/// </summary>
public sealed class SampleOrder
{
    public long TokenCount { get; }
    public int SeqLen { get; }
    public ulong Seed { get; }

    /// <summary>Samples per epoch.</summary>
    public long Count { get; }

    public SampleOrder(long tokenCount, int seqLen, ulong seed)
    {
        if (seqLen <= 0)
            throw new ArgumentOutOfRangeException(nameof(seqLen));
        TokenCount = tokenCount;
        SeqLen = seqLen;
        Seed = seed;
        Count = Math.Max(0, (tokenCount - 1) / seqLen);
        if (Count == 0)
            throw new FlmUserException($"the data has {tokenCount} tokens, fewer than one sequence of {seqLen + 1}; add data or lower model.seq_len");
    }

    /// <summary>Window (0 … Count−1) that global sample <paramref name="globalIndex"/> reads.</summary>
    public long WindowOf(long globalIndex)
    {
        if (globalIndex < 0)
            throw new ArgumentOutOfRangeException(nameof(globalIndex));
        var epoch = globalIndex / Count;
        var position = globalIndex % Count;
        return new FeistelPermutation(Count, Mix(Seed ^ Mix((ulong)epoch + 0x9E3779B97F4A7C15UL))).Map(position);
    }

    /// <summary>First token of the S+1-token window behind a global sample.</summary>
    public long StartToken(long globalIndex) => WindowOf(globalIndex) * SeqLen;

    internal static ulong Mix(ulong z)
    {
        // SplitMix64 finaliser: a fixed, platform-independent bit mixer.
        z += 0x9E3779B97F4A7C15UL;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
        return z ^ (z >> 31);
    }
}

/// <summary>A keyed bijection of [0, n): a balanced Feistel network over the next even power of two, with cycle walking.</summary>
public readonly struct FeistelPermutation
{
    private const int Rounds = 6;
    private readonly long _n;
    private readonly ulong _key;
    private readonly int _halfBits;
    private readonly ulong _halfMask;

    public FeistelPermutation(long n, ulong key)
    {
        if (n <= 0)
            throw new ArgumentOutOfRangeException(nameof(n));
        _n = n;
        _key = key;
        var bits = n <= 1 ? 0 : 64 - System.Numerics.BitOperations.LeadingZeroCount((ulong)(n - 1));
        _halfBits = Math.Max(1, (bits + 1) / 2);
        _halfMask = (1UL << _halfBits) - 1;
    }

    public long Map(long x)
    {
        if ((ulong)x >= (ulong)_n)
            throw new ArgumentOutOfRangeException(nameof(x));
        var v = (ulong)x;
        do
        {
            v = Encrypt(v);
        }
        while (v >= (ulong)_n);
        return (long)v;
    }

    private ulong Encrypt(ulong v)
    {
        var left = v >> _halfBits;
        var right = v & _halfMask;
        for (var r = 0; r < Rounds; r++)
        {
            var f = SampleOrder.Mix(right ^ _key ^ ((ulong)r * 0xD1B54A32D192ED03UL)) & _halfMask;
            (left, right) = (right, left ^ f);
        }
        return (left << _halfBits) | right;
    }
}
