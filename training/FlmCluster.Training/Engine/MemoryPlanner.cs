using FlmCluster.Training.Config;
using FlmCluster.Training.Model;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Training.Engine;

/// <summary>Parameters and state bytes one rank holds for a model, layout and precision.</summary>
public sealed record RankMemory(
    int Stage,
    long Parameters,
    long WeightBytes,
    long GradientBytes,
    long OptimizerBytesReplicated,
    long OptimizerBytesDistributed)
{
    public long TotalReplicated => WeightBytes + GradientBytes + OptimizerBytesReplicated;
    public long TotalDistributed => WeightBytes + GradientBytes + OptimizerBytesDistributed;
}

/// <summary>
/// Per-rank parameter and memory arithmetic of this engine (activations excluded): weights and gradients in
/// the parameter dtype; Adam moments in fp32 (fp64 for fp64 runs) plus fp32 master weights when the
/// parameters are bf16; the distributed optimizer divides the optimizer part by dp.
/// </summary>
public static class MemoryPlanner
{
    /// <summary>Parameters a rank of pipeline stage <paramref name="stage"/> holds (all TP ranks hold the same count).</summary>
    public static long RankParameters(ModelConfig model, ParallelLayout layout, int stage) =>
        ParamCatalog.For(model, StagePlan.For(model, stage, layout.Pp))
            .Sum(x => x.Spec.LocalShape(layout.Tp).Aggregate(1L, (a, b) => a * b));

    public static RankMemory ForStage(ModelConfig model, ParallelLayout layout, int stage, string precision, string device)
    {
        var paramBytes = precision switch
        {
            "fp64" => 8,
            "bf16" => 2,
            "fp32" => 4,
            _ => device.StartsWith("cuda", StringComparison.Ordinal) ? 2 : 4,
        };
        var stateBytes = paramBytes == 8 ? 8 : 4;
        var masterBytes = paramBytes == 2 ? 4 : 0;
        var p = RankParameters(model, layout, stage);
        var optimizer = p * (2L * stateBytes + masterBytes);
        return new RankMemory(stage, p, p * paramBytes, p * paramBytes, optimizer, (long)Math.Ceiling((double)optimizer / layout.Dp));
    }

    /// <summary>
    /// Activation bytes a rank of pipeline stage <paramref name="stage"/> keeps for backward at its peak, with 2-byte
    /// activations: per layer and micro-batch s·b·h·(10 + 24/tp) (Korthikanti et al. 2022, "Reducing Activation
    /// Recomputation in Large Transformer Models", without sequence parallelism and without the s² attention scores,
    /// which fused attention does not keep), times the micro-batches in flight on the stage under 1F1B
    /// (min(pp − stage, m)). With full recomputation only each layer's input (2·s·b·h) is kept, plus one layer's
    /// activations while it is recomputed.
    /// </summary>
    public static long ActivationBytes(ModelConfig model, ParallelLayout layout, int stage, int microBatchSize, bool recompute)
    {
        var sbh = (double)model.SeqLen * microBatchSize * model.Hidden;
        var perLayer = sbh * (10 + 24.0 / layout.Tp);
        var layers = model.Layers / layout.Pp;
        var inFlight = Math.Min(layout.Pp - stage, layout.MicroBatches);
        var bytes = recompute ? inFlight * layers * 2 * sbh + perLayer : inFlight * layers * perLayer;
        return (long)Math.Ceiling(bytes);
    }
}
