using FlmCluster.Training.Engine;
using FlmCluster.Training.Model;
using static TorchSharp.torch;

namespace FlmCluster.Training.Checkpoint;

/// <summary>
/// A copy, in host memory, of what one rank must save: its parameters (from one data-parallel replica only:
/// the others are identical), and its distributed-optimizer shard (moments, and fp32 master weights when the
/// parameters are bf16). Taken between steps in one memory copy; written to disk afterwards while training
/// goes on.
/// </summary>
public sealed class RankSnapshot : IDisposable
{
    public sealed record Entry(ParamSpec Spec, bool IsTiedCopy, long Offset, long Count, long[] LocalShape);

    public int Rank { get; }
    public int TpRank { get; }
    public int TpSize { get; }

    /// <summary>The layout the rank belongs to, e.g. "dp=2,tp=1,pp=2,micro=2".</summary>
    public string Layout { get; }
    public long AdamStep { get; }
    public Tensor? Params { get; }
    public IReadOnlyDictionary<string, Tensor> Optimizer { get; }
    public long ShardStart { get; }
    public long ShardLength { get; }
    public IReadOnlyList<Entry> Entries { get; }

    private RankSnapshot(int rank, int tpRank, int tpSize, string layout, long adamStep, Tensor? parameters, IReadOnlyDictionary<string, Tensor> optimizer,
        long shardStart, long shardLength, IReadOnlyList<Entry> entries)
    {
        Rank = rank;
        TpRank = tpRank;
        TpSize = tpSize;
        Layout = layout;
        AdamStep = adamStep;
        Params = parameters;
        Optimizer = optimizer;
        ShardStart = shardStart;
        ShardLength = shardLength;
        Entries = entries;
    }

    /// <summary>
    /// Copies the rank's state (call on the rank's device thread, between steps). Parameters are copied on
    /// data-parallel rank 0 only: the other replicas hold the same values.
    /// </summary>
    public static RankSnapshot Capture(RankTrainer rank)
    {
        using var _ = no_grad();
        var opt = rank.Optimizer;
        var separateMaster = rank.Flat.Params.dtype != opt.Master.dtype;
        var optimizer = new Dictionary<string, Tensor>
        {
            ["exp_avg"] = opt.ExpAvg.cpu().clone().DetachFromDisposeScope(),
            ["exp_avg_sq"] = opt.ExpAvgSq.cpu().clone().DetachFromDisposeScope(),
        };
        if (separateMaster)
            optimizer["master"] = opt.Master.cpu().clone().DetachFromDisposeScope();
        var parameters = rank.Groups.Coords.Dp == 0 ? rank.Flat.Params.cpu().clone().DetachFromDisposeScope() : null;
        var entries = rank.Flat.Entries
            .Select(e => new Entry(e.Parameter.Spec, e.Parameter.IsTiedCopy, e.Offset, e.Count, e.Parameter.Tensor.shape))
            .ToList();
        return new RankSnapshot(rank.Groups.Rank, rank.Groups.Coords.Tp, rank.Layout.Tp, rank.Layout.ToString(), opt.Step, parameters, optimizer,
            opt.ShardStart, opt.ShardLength, entries);
    }

    public long Bytes => (Params?.NumberOfElements * Params?.ElementSize ?? 0) + Optimizer.Values.Sum(t => t.NumberOfElements * t.ElementSize);

    public void Dispose()
    {
        Params?.Dispose();
        foreach (var t in Optimizer.Values)
            t.Dispose();
    }
}
