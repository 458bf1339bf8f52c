using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Telemetry;
using FlmCluster.Training.Config;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Grains.Jobs;

/// <summary>
/// Builds a job's ranks on its workers — from the seed, a checkpoint, the in-memory replicas, or grown into
/// the next stage — and moves the job to Running once every rank holds its state. A growth transition is
/// finished here: the loss of the batch measured before growth is measured again on the grown model.
/// </summary>
public sealed class RankBuilder(JobStateMachine job, RankCalls ranks, StepDriver steps, TimeProvider time)
{
    public async Task Build()
    {
        var started = time.GetTimestamp();
        var startedAt = job.Now;
        var rebuild = job.State.Rebuild ?? Rebuild.Fresh;
        var workers = job.Ranks;
        var json = job.Job.ToJson();
        var at = job.Cursor;
        var key = SessionKeys.New(); // data-plane connections of this build prove it to each other
        var reports = await ranks.All((worker, rank) => worker.Assign(
            new WorkerAssignment(job.JobId, job.State.Incarnation, json, rank, workers, at.NextStep, at.SamplesConsumed, at.Stage, rebuild, key)));
        if (job.State.Time.Use == TimeUse.Rebuild)
        {
            // Ranks rebuild in parallel: the slowest rank's loading is the restore share of the rebuild.
            job.Spend(TimeUse.Rebuild);
            job.State.Time.MoveToRestore(reports.Max(r => r.RestoreMs) / 1000);
        }
        if (rebuild.Kind == RebuildKind.Growth)
            await ReportGrowth();
        if (job.State.LastReplica is null && job.Job.Job.Checkpoint.MemoryInterval > 0 && ReplicaPeers.For(workers, job.StageLayout) is null)
            job.Log("replica-off", "checkpoint.memory_interval is set but all ranks are on one server, where a replica would die with its rank");
        RecoveryTelemetry.Rebuilt(job.JobId, rebuild.Kind.ToString().ToLowerInvariant(), workers.Count, startedAt);
        await job.BecomeRunning($"{workers.Count} workers built their model slices {rebuild}{(job.Job.Stages.Count > 1 ? $" for stage {job.StageName}" : "")} " +
            $"in {time.GetElapsedTime(started).TotalSeconds:0.0} s");
    }

    /// <summary>The grown model's loss on the batch measured before growth: equal when growth preserved the function.</summary>
    private async Task ReportGrowth()
    {
        var before = job.State.Growth?.LossBefore ?? double.NaN;
        var after = await steps.EvaluateNextBatch();
        var (from, to) = (job.Job.Stages[job.Cursor.Stage - 1], job.Job.Stages[job.Cursor.Stage]);
        static string Shape(ModelConfig m) => $"{m.Layers} layers × {m.Hidden} ({m.Heads} heads, FFN {m.FfnSize}), {m.ParameterCount:N0} parameters";
        static string LayoutOf(JobConfig j) => ParallelLayout.FromConfig(j.Layout).ToString();
        var took = job.State.Growth is { } growth ? (job.Now.UtcDateTime - growth.StartedAt).TotalSeconds : 0;
        if (job.State.Growth is { } transition)
            RecoveryTelemetry.Grown(job.JobId, from.Name, to.Name, job.Cursor.NextStep, new DateTimeOffset(transition.StartedAt, TimeSpan.Zero));
        job.Log("growth", $"{from.Name} → {to.Name} at step {job.Cursor.NextStep}: {Shape(from.Job.Model)} → {Shape(to.Job.Model)}, layout {LayoutOf(from.Job)} → {LayoutOf(to.Job)}; " +
            $"loss of the next batch {before:0.000000} before, {after:0.000000} after (difference {after - before:+0.0e+00;-0.0e+00;0}); masks ramp over {to.Ramp.Steps} steps; {took:0.0} s");
        job.State.Growth = null;
    }
}
