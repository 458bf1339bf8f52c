namespace FlmCluster.Grains.Jobs;

/// <summary>
/// The end of a growth stage, one orchestrated operation: the loss of the next batch under the old model, a
/// checkpoint of the stage (committed before anything changes, so a failure at any point resumes from it), then
/// every worker rebuilds its rank in the next stage's shape and layout, grown from that checkpoint
/// (<see cref="RankBuilder"/> finishes it).
/// </summary>
public sealed class StageTransitions(JobStateMachine job, RecoveryPoints points, StepDriver steps)
{
    /// <summary>One tick of the transition; steps wait until the workers grow.</summary>
    public async Task EndStage()
    {
        job.Spend(TimeUse.Growth);
        if (job.State.Growth is null)
        {
            job.State.Growth = new GrowthTransition(await steps.EvaluateNextBatch(), job.Now.UtcDateTime);
            await job.Save();
        }
        if (!await points.CheckpointedNow())
            return;
        var from = job.Job.Stages[job.Cursor.Stage];
        var to = job.Job.Stages[job.Cursor.Stage + 1];
        var stageCheckpoint = job.State.LastCheckpoint!.Directory;
        points.DropInFlight();
        await job.BecomeStarting(Abstractions.Rebuild.GrowFrom(stageCheckpoint), job.Cursor.IntoNextStage(), "growing",
            () => $"stage {from.Name} → {to.Name} at step {job.Cursor.NextStep}: workers grow from {stageCheckpoint}");
    }
}
