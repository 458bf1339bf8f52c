using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Config;

namespace FlmCluster.Grains.Jobs;

/// <summary>What the ranks of a job can be rebuilt from.</summary>
public enum RecoverySource
{
    /// <summary>Nothing was trained yet: from the job's seed (or the checkpoint it resumes from).</summary>
    Start,

    /// <summary>The newest in-memory replicas (each rank's shard from its own server or its peer's), into any layout.</summary>
    Replicas,

    /// <summary>The newest valid checkpoint on disk, into any layout.</summary>
    Checkpoint,

    /// <summary>The checkpoint that ended the previous growth stage: the growth transition is done again.</summary>
    StageCheckpoint,
}

/// <summary>What a coordinator does about a failure (or, without one, about a job running on fewer GPUs than it asked for).</summary>
public abstract record RecoveryDecision(string Reason)
{
    /// <summary>Nothing to change: the next tick repeats what was under way (workers answer repeats idempotently).</summary>
    public sealed record Continue(string Reason) : RecoveryDecision(Reason);

    /// <summary>Nothing can rebuild the ranks now: look again at <paramref name="RetryAt"/>.</summary>
    public sealed record Wait(DateTimeOffset RetryAt, string Reason) : RecoveryDecision(Reason);

    /// <summary>Rebuild the ranks on the GPUs the job holds (their servers are back, or never left).</summary>
    public sealed record Restore(RecoverySource From, string Reason) : RecoveryDecision(Reason);

    /// <summary>Rebuild the ranks on free GPUs of the same shape in place of lost ones: the same layout.</summary>
    public sealed record Replace(int Dp, RecoverySource From, string Reason) : RecoveryDecision(Reason);

    /// <summary>Continue with fewer data-parallel replicas (same tensor and pipeline split, same global batch).</summary>
    public sealed record Shrink(int Dp, RecoverySource From, string Reason) : RecoveryDecision(Reason);

    /// <summary>GPUs for more replicas are free again: checkpoint, then continue in the larger layout.</summary>
    public sealed record GrowBack(int Dp, string Reason) : RecoveryDecision(Reason);

    public sealed record Fail(string Reason) : RecoveryDecision(Reason);
}

/// <summary>Where a job stands, as recovery sees it.</summary>
/// <param name="Rebuilding">While starting: what the ranks are being rebuilt from (null when running).</param>
/// <param name="Dp">Data-parallel size of the job's widest layout now.</param>
/// <param name="SubmittedDp">… and as submitted.</param>
/// <param name="NextStep">The committed step.</param>
/// <param name="ReplicaStep">The step of the newest in-memory replicas every rank's holders have, or null.</param>
/// <param name="CheckpointStep">The step of the newest committed checkpoint (in the job's folder, or the one it resumes from), or null.</param>
/// <param name="CanCheckpoint">The job has a checkpoint folder (a grow-back goes through a checkpoint).</param>
/// <param name="OutageSince">When the current loss of workers began, or null.</param>
/// <param name="Anomalies">For an anomaly: the rollbacks already done at its step.</param>
/// <param name="StorageDownSince">When saving the job's state began to fail, or null.</param>
public sealed record JobSnapshot(
    JobPhase Phase,
    RebuildKind? Rebuilding,
    int RestoresWithoutProgress,
    int Dp,
    int SubmittedDp,
    long NextStep,
    long? ReplicaStep,
    long? CheckpointStep,
    bool CanCheckpoint,
    DateTimeOffset? OutageSince,
    int Anomalies = 0,
    DateTimeOffset? StorageDownSince = null);

/// <summary>A job's recovery settings: its own (recovery.*), with the server's wait where it gives none.</summary>
/// <param name="SpikeLimit">Rollbacks at the same step before an anomaly fails the job.</param>
/// <param name="Suspect">
/// How long a worker that is out of reach while membership still counts its server active is given before its
/// ranks are rebuilt in place: membership declares a crashed server dead well within it.
/// </param>
/// <param name="SpikeLimit">Rollbacks at the same step before an anomaly fails the job.</param>
/// <param name="StorageWait">How long steps wait for the grain storage to come back before the job fails.</param>
public sealed record RecoverySettings(
    TimeSpan Wait, int RestoreLimit, bool Replace, bool Shrink, TimeSpan RetryEvery, TimeSpan Suspect, int SpikeLimit = 3, TimeSpan StorageWait = default)
{
    public static RecoverySettings For(RecoveryConfig job, TimeSpan serverWait) =>
        new(job.WaitSeconds is { } seconds ? TimeSpan.FromSeconds(seconds) : serverWait, job.RestoreLimit, job.Replace, job.Shrink,
            RetryEvery: TimeSpan.FromSeconds(1), Suspect: TimeSpan.FromSeconds(30), job.SpikeLimit, TimeSpan.FromSeconds(job.StorageWaitSeconds));
}

/// <summary>
/// How a job recovers, as a pure function of where it stands, what failed, what the cluster can offer and the
/// time. The order of preference when ranks are lost: rebuild in place when their servers are back; replace
/// them with free GPUs of the same shape; wait for the servers; after the wait, shrink onto fewer replicas. The
/// newest recovery point is used, in whatever layout the job continues: in-memory replicas when they are at
/// least as new as the newest checkpoint, else the checkpoint.
/// </summary>
public static class RecoveryPolicy
{
    public static RecoveryDecision Decide(JobSnapshot job, Failure? failure, ClusterView cluster, RecoverySettings settings, DateTimeOffset now)
    {
        if (failure is null)
            return Review(job, cluster);
        switch (failure.Kind)
        {
            case FailureKind.UserError or FailureKind.Fatal:
                return new RecoveryDecision.Fail(failure.Message);
            case FailureKind.StateConflict:
                return new RecoveryDecision.Continue("the job's state changed on storage; continuing from it");
            case FailureKind.StorageUnavailable:
                // Nothing can be committed: steps wait (they are repeated once it is back) for a while, then the job stops.
                var down = now - (job.StorageDownSince ?? now);
                return down < settings.StorageWait
                    ? new RecoveryDecision.Wait(now + settings.RetryEvery, $"{failure.Message}; retrying for up to {settings.StorageWait.TotalSeconds:0} s")
                    : new RecoveryDecision.Fail($"{failure.Message}, for more than {settings.StorageWait.TotalSeconds:0} s (recovery.storage_wait_seconds)");
            case FailureKind.CoordinatorRestarted:
                return new RecoveryDecision.Continue($"{failure.Message}; continuing from committed step {job.NextStep}");
            case FailureKind.Anomaly when job.Anomalies >= settings.SpikeLimit:
                return new RecoveryDecision.Fail($"{failure.Message}; {job.Anomalies} rollbacks did not get past step {failure.AtStep} (recovery.spike_limit)");
            case FailureKind.Anomaly:
                // The ranks are fine: roll back in place to a point before the skipped batches.
                return SourceFor(job, failure) is { } point
                    ? new RecoveryDecision.Restore(point, failure.Message)
                    : new RecoveryDecision.Fail($"{failure.Message}; no recovery point at or before step {failure.RewindTo} to roll back to");
        }
        if (job.RestoresWithoutProgress >= settings.RestoreLimit)
            return new RecoveryDecision.Fail($"{job.RestoresWithoutProgress} restores in a row without a committed step (recovery.restore_limit); last failure: {failure.Message}");
        if (SourceFor(job, failure) is not { } source)
            return new RecoveryDecision.Fail($"workers lost and nothing to rebuild them from (no checkpoint and no in-memory replicas): {failure.Message}");
        var waited = now - (job.OutageSince ?? now);
        if (cluster.AllocationAlive)
        {
            // Out of reach, yet membership counts the servers active: a crash not declared yet, or a blip. Ask again
            // until membership decides (a restarted server answers with WorkerReset at once).
            if (failure.Kind == FailureKind.WorkerLost && waited < settings.Suspect)
                return new RecoveryDecision.Wait(now + settings.RetryEvery, $"{failure.Message}; waiting for membership to tell whether its server is gone");
            return new RecoveryDecision.Restore(source, failure.Message);
        }
        if (settings.Replace && cluster.FittingDp.Contains(job.Dp))
            return new RecoveryDecision.Replace(job.Dp, source, failure.Message);
        // Fewer replicas means another layout: replicas reshard like a checkpoint, so the newest point serves.
        if (waited >= settings.Wait && settings.Shrink && cluster.FittingDp.FirstOrDefault(dp => dp < job.Dp) is > 0 and var dp)
            return new RecoveryDecision.Shrink(dp, source, $"servers gone for more than {settings.Wait.TotalSeconds:0} s ({failure.Message})");
        return new RecoveryDecision.Wait(now + settings.RetryEvery,
            waited < settings.Wait
                ? $"{failure.Message}; waiting up to {settings.Wait.TotalSeconds:0} s for the servers to come back"
                : $"{failure.Message}; no GPUs to continue on, waiting for servers");
    }

    /// <summary>A running job on fewer replicas than it asked for grows back when GPUs for more are free.</summary>
    private static RecoveryDecision Review(JobSnapshot job, ClusterView cluster) =>
        job.Phase == JobPhase.Running && job.Dp < job.SubmittedDp && job.CanCheckpoint && cluster.FittingDp.FirstOrDefault(dp => dp > job.Dp) is > 0 and var dp
            ? new RecoveryDecision.GrowBack(dp, $"GPUs for dp={dp} are free again")
            : new RecoveryDecision.Continue("nothing to change");

    /// <summary>The newest point the ranks can be rebuilt from, or null when there is none.</summary>
    private static RecoverySource? SourceFor(JobSnapshot job, Failure failure)
    {
        if (job.Rebuilding == RebuildKind.Growth)
            return RecoverySource.StageCheckpoint;
        if (failure.Kind != FailureKind.ReplicaUnavailable && job.ReplicaStep is { } replicas && replicas >= (job.CheckpointStep ?? -1)
            && replicas <= (failure.RewindTo ?? long.MaxValue))
            return RecoverySource.Replicas;
        if (job.CheckpointStep is not null)
            return RecoverySource.Checkpoint;
        return job.NextStep == 0 || failure.Kind == FailureKind.Anomaly ? RecoverySource.Start : null;
    }
}
