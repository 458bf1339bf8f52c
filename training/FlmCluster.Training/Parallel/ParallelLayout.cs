using System.Globalization;
using FlmCluster.Training.Config;

namespace FlmCluster.Training.Parallel;

/// <summary>Position of one rank: tensor-parallel rank, data-parallel rank, pipeline stage.</summary>
public readonly record struct RankCoords(int Tp, int Dp, int Pp)
{
    public override string ToString() => $"tp{Tp}/dp{Dp}/pp{Pp}";
}

/// <summary>
/// A (dp, tp, pp) layout plus micro-batches per step. Ranks are ordered as in Megatron-LM: tensor-parallel
/// rank fastest, then data-parallel, then pipeline stage, so a TP group is a run of adjacent ranks
/// (and stays inside one server when tp divides the GPUs per server).
/// </summary>
public sealed record ParallelLayout(int Dp, int Tp, int Pp, int MicroBatches = 1)
{
    public static ParallelLayout Single { get; } = new(1, 1, 1, 1);

    /// <summary>Ranks of the layout; <see cref="Validate"/> refuses layouts whose product does not fit.</summary>
    public int WorldSize => checked(Dp * Tp * Pp);

    /// <summary>The most ranks a layout may have.</summary>
    public const int MaxRanks = 1 << 20;

    public int RankOf(RankCoords c) => c.Tp + Tp * (c.Dp + Dp * c.Pp);

    public RankCoords CoordsOf(int rank)
    {
        if (rank < 0 || rank >= WorldSize)
            throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} outside 0..{WorldSize - 1}");
        return new RankCoords(rank % Tp, rank / Tp % Dp, (int)(rank / ((long)Tp * Dp)));
    }

    public static ParallelLayout FromConfig(LayoutConfig c) => new(c.Dp, c.Tp, c.Pp, c.MicroBatches);

    public LayoutConfig ToConfig() => new() { Dp = Dp, Tp = Tp, Pp = Pp, MicroBatches = MicroBatches };

    /// <summary>Sequences per micro-batch on one data-parallel rank.</summary>
    public int MicroBatchSize(int globalBatch) => (int)(globalBatch / ((long)Dp * MicroBatches));

    /// <summary>The contiguous block of layers that pipeline stage <paramref name="stage"/> owns.</summary>
    public (int First, int Count) StageLayers(int stage, int layers)
    {
        var per = layers / Pp;
        return (stage * per, per);
    }

    /// <summary>Parses <c>dp=2,tp=2,pp=2[,micro=4]</c> (any order, missing axes are 1).</summary>
    public static LayoutConfig Parse(string text, LayoutConfig? defaults = null)
    {
        var result = defaults ?? new LayoutConfig();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var eq = part.IndexOf('=');
            if (eq <= 0 || !int.TryParse(part[(eq + 1)..], NumberStyles.Integer, CultureInfo.InvariantCulture, out var value))
                throw new FlmUserException($"--layout '{text}': '{part}' is not axis=number; write e.g. --layout dp=2,tp=2,pp=2");
            result = part[..eq].Trim().ToLowerInvariant() switch
            {
                "dp" => result with { Dp = value },
                "tp" => result with { Tp = value },
                "pp" => result with { Pp = value },
                "micro" or "micro_batches" or "mb" => result with { MicroBatches = value },
                var axis => throw new FlmUserException($"--layout '{text}': unknown axis '{axis}'; the axes are dp, tp, pp and micro"),
            };
        }
        return result;
    }

    /// <summary>Checks the layout against a model and batch before any compute; throws one clear message.</summary>
    public void Validate(ModelConfig model, int globalBatch, int? availableRanks = null)
    {
        Require(Dp >= 1 && Tp >= 1 && Pp >= 1, $"layout dp={Dp}, tp={Tp}, pp={Pp}: every axis must be at least 1");
        Require(MicroBatches >= 1, $"layout micro_batches={MicroBatches} must be at least 1");
        // Products in 64 bits: dp × tp × pp and dp × micro_batches must not wrap around.
        var ranks = (long)Dp * Tp * Pp;
        Require(ranks <= MaxRanks, $"layout dp×tp×pp = {Dp}×{Tp}×{Pp} = {ranks} ranks is more than {MaxRanks}; give smaller axes");
        Require(model.Heads % Tp == 0,
            $"layout tp={Tp} does not divide model.heads={model.Heads}; choose tp from {{{Divisors(model.Heads)}}}");
        Require(model.FfnSize % Tp == 0,
            $"layout tp={Tp} does not divide the FFN size {model.FfnSize}; choose tp from {{{Divisors(model.FfnSize)}}}");
        Require(model.PaddedVocab % Tp == 0,
            $"layout tp={Tp} does not divide the padded vocabulary {model.PaddedVocab}; raise model.vocab_pad_multiple to a multiple of 128×tp");
        Require(Pp <= model.Layers,
            $"layout pp={Pp} exceeds model.layers={model.Layers}; each pipeline stage needs at least one layer");
        Require(model.Layers % Pp == 0,
            $"layout pp={Pp} does not divide model.layers={model.Layers}; choose pp from {{{Divisors(model.Layers)}}}");
        var perStep = (long)Dp * MicroBatches;
        Require(globalBatch % perStep == 0,
            $"train.global_batch={globalBatch} is not divisible by dp×micro_batches={Dp}×{MicroBatches}={perStep}; change the batch or the layout");
        if (availableRanks is { } available)
            Require(ranks == available,
                $"layout dp×tp×pp = {Dp}×{Tp}×{Pp} = {ranks} ranks, but {available} workers are available; choose a layout whose product is {available}");
    }

    public override string ToString() => $"dp={Dp},tp={Tp},pp={Pp},micro={MicroBatches}";

    private static string Divisors(int n) => string.Join(",", Enumerable.Range(1, Math.Min(n, 64)).Where(d => n % d == 0));

    private static void Require(bool condition, string message)
    {
        if (!condition)
            throw new FlmUserException(message);
    }
}
