using FlmCluster.Training.Checkpoint;

namespace FlmCluster.Training.Jobs;

/// <summary>
/// Where a job stands between steps: the next step to run, the data cursor (global samples consumed), Adam's
/// step count, and the growth stage with the step it started at. Everything a step plan and a checkpoint's
/// progress fields derive from.
/// </summary>
public sealed record JobCursor(long NextStep, long SamplesConsumed, long AdamStep, int Stage, long StageStartStep)
{
    /// <summary>A job before its first step (a new instance each time: a deserializer may fill one in place).</summary>
    public static JobCursor Start => new(0, 0, 0, 0, 0);

    /// <summary>Where a checkpoint left the job.</summary>
    public static JobCursor Of(CheckpointManifest manifest) =>
        new(manifest.Step, manifest.SamplesConsumed, manifest.AdamStep, manifest.Stage, manifest.StageStartStep);

    /// <summary>The cursor after a committed step of <paramref name="globalBatch"/> samples (a skipped update leaves Adam's count).</summary>
    public JobCursor After(bool skipped, int globalBatch) =>
        this with { NextStep = NextStep + 1, SamplesConsumed = SamplesConsumed + globalBatch, AdamStep = AdamStep + (skipped ? 0 : 1) };

    /// <summary>The next stage starts here.</summary>
    public JobCursor IntoNextStage() => this with { Stage = Stage + 1, StageStartStep = NextStep };
}
