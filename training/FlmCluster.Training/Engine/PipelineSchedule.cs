namespace FlmCluster.Training.Engine;

public enum PipelineOp
{
    Forward,
    Backward,
}

public readonly record struct PipelineAction(PipelineOp Op, int MicroBatch);

/// <summary>The non-interleaved 1F1B schedule (PipeDream-Flush, as in Megatron-LM).</summary>
public static class PipelineSchedule
{
    /// <summary>
    /// Stage s of p runs min(p−s−1, m) warm-up forwards, then alternates one forward and one backward,
    /// then drains the remaining backwards. At most p−s micro-batches are in flight on stage s.
    /// </summary>
    public static IReadOnlyList<PipelineAction> OneForwardOneBackward(int stage, int stages, int microBatches)
    {
        if (stages < 1 || stage < 0 || stage >= stages || microBatches < 1)
            throw new ArgumentOutOfRangeException(nameof(stage), $"stage {stage} of {stages}, {microBatches} micro-batches");
        var warmup = Math.Min(stages - stage - 1, microBatches);
        var steady = microBatches - warmup;
        var actions = new List<PipelineAction>(2 * microBatches);
        for (var i = 0; i < warmup; i++)
            actions.Add(new(PipelineOp.Forward, i));
        for (var i = 0; i < steady; i++)
        {
            actions.Add(new(PipelineOp.Forward, warmup + i));
            actions.Add(new(PipelineOp.Backward, i));
        }
        for (var i = steady; i < microBatches; i++)
            actions.Add(new(PipelineOp.Backward, i));
        return actions;
    }

    /// <summary>Idle fraction of an ideal 1F1B pipeline with equal stage times: (p−1)/(m+p−1).</summary>
    public static double IdealBubbleFraction(int stages, int microBatches) => (stages - 1.0) / (microBatches + stages - 1.0);
}
