using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Jobs;

namespace FlmCluster.Grains.Jobs;

/// <summary>
/// Carries out the recovery policy's decisions for one job: asks the scheduler what the cluster can offer,
/// decides (<see cref="RecoveryPolicy"/>), and rebuilds the ranks in place, on replacement GPUs or on fewer
/// replicas from the newest recovery point, waits, grows back, or fails the job.
/// </summary>
public sealed class Recovery(JobStateMachine job, RecoveryPoints points, RankCalls ranks, IClusterSchedulerGrain scheduler, RecoverySettings settings)
{
    private static readonly TimeSpan ProbeTimeout = TimeSpan.FromSeconds(2);

    private DateTimeOffset _lastReview = DateTimeOffset.MinValue;
    private DateTimeOffset? _storageDownSince;

    /// <summary>The job's state was saved again: a storage outage is over.</summary>
    public void StorageBack() => _storageDownSince = null;

    private JobState S => job.State;

    /// <summary>
    /// Decides what to do about <paramref name="failure"/> and does it, except failing the job, which is the
    /// grain's (it releases the workers and tells the scheduler): returns the decision.
    /// </summary>
    public async Task<RecoveryDecision> Handle(Failure failure)
    {
        if (failure.Kind == FailureKind.StorageUnavailable)
        {
            // Nothing can be persisted now: decide in memory; a wait is the grain's to keep (it backs off).
            _storageDownSince ??= job.Now;
            return RecoveryPolicy.Decide(Snapshot(failure) with { StorageDownSince = _storageDownSince }, failure, new ClusterView(true, []), settings, job.Now);
        }
        if (failure.Kind == FailureKind.Hang)
        {
            // Its GPU goes out of service; from here it is a lost worker the cluster may replace.
            await scheduler.MarkUnusable(job.JobId, failure.Workers ?? [], failure.Message);
            failure = failure with { Kind = FailureKind.WorkerLost };
        }
        if (failure.Kind is FailureKind.WorkerLost or FailureKind.WorkerReset or FailureKind.ReplicaUnavailable or FailureKind.Anomaly)
        {
            // The step (or the coordinator's work) that failed was spent finding out: the recovery's detect phase.
            S.Time.BeginRecovery();
            job.Spend(TimeUse.Decide, S.Time.Use is TimeUse.Step or TimeUse.Overhead or TimeUse.CheckpointStall ? TimeUse.Detect : null);
        }
        if (failure.Kind is FailureKind.WorkerLost or FailureKind.WorkerReset or FailureKind.ReplicaUnavailable && S.OutageSince is null)
        {
            S.OutageSince = job.Now;
            S.OutageReason = failure.Message;
            S.OutageKind = failure.Kind;
            job.Log("workers-lost", failure.Message);
        }
        if (failure.Kind == FailureKind.ReplicaUnavailable && S.LastReplica is not null)
        {
            // A rank and its peer were both lost: the replicas cannot rebuild the job; a checkpoint may.
            job.Log("replica-unavailable", failure.Message);
            S.LastReplica = null;
        }
        var cluster = await Survey();
        // Out of reach while membership counts every server active: if every worker answers now, the servers
        // restarted or it was a blip, and the ranks are rebuilt at once rather than after the suspicion wait.
        if (failure.Kind == FailureKind.WorkerLost && cluster.AllocationAlive && await ranks.AllAnswer(ProbeTimeout))
            failure = failure with { Kind = FailureKind.WorkerReset };
        var decision = RecoveryPolicy.Decide(Snapshot(failure), failure, cluster, settings, job.Now);
        return await Carry(decision, failure.RewindTo);
    }

    /// <summary>While waiting: the servers may be back, or GPUs free.</summary>
    public Task<RecoveryDecision> Retry() => Handle(new Failure(S.OutageKind ?? FailureKind.WorkerLost, S.OutageReason ?? "workers lost"));

    /// <summary>
    /// While running on fewer replicas than submitted: now and then, whether GPUs for more are free; once a
    /// grow-back is decided, the checkpoint it moves through, then the move. True while steps must wait.
    /// </summary>
    public async Task<bool> GrowingBack()
    {
        if (S.GrowBackDp is null)
        {
            if (job.DataParallelSize >= job.Submitted.WidestLayout.Dp || job.Now - _lastReview < Max(settings.Wait, settings.RetryEvery))
                return false;
            _lastReview = job.Now;
            if (RecoveryPolicy.Decide(Snapshot(null), null, await Survey(), settings, job.Now) is not RecoveryDecision.GrowBack grow)
                return false;
            S.GrowBackDp = grow.Dp;
            job.Log("growing-back", $"{grow.Reason}; checkpointing step {job.Cursor.NextStep} to move there");
            await job.Save();
        }
        job.Spend(TimeUse.CheckpointStall);
        if (!await points.CheckpointedNow())
            return true;
        job.Spend(TimeUse.Allocate, TimeUse.CheckpointStall);
        var widest = job.Submitted.WidestLayout;
        var choices = job.Submitted.DataParallelChoices.Where(dp => dp > job.DataParallelSize).ToList();
        var allocation = await scheduler.Reallocate(job.JobId, choices, widest.Tp, widest.Pp);
        S.GrowBackDp = null;
        if (allocation is null)
        {
            job.Log("growing-back", "the GPUs were taken meanwhile; staying as is");
            await job.Save();
            return false;
        }
        var before = Describe();
        var checkpoint = S.LastCheckpoint!;
        await job.BecomeStarting(Abstractions.Rebuild.FromCheckpoint(checkpoint.Directory), checkpoint.Cursor, "grown-back", () => $"{before} → {Describe()}", allocation);
        return true;
    }

    /// <param name="rewindTo">The latest step the job may be rebuilt at (an anomaly's), or null for the newest.</param>
    private async Task<RecoveryDecision> Carry(RecoveryDecision decision, long? rewindTo)
    {
        switch (decision)
        {
            case RecoveryDecision.Wait wait:
                await job.BecomeWaiting(wait.RetryAt, wait.Reason);
                return decision;
            case RecoveryDecision.Restore restore:
                return await Rebuild(decision, restore.From, rewindTo is null ? "restoring" : "rolled-back", null, rewindTo);
            case RecoveryDecision.Replace replace:
                return await Move(decision, replace.Dp, replace.From, "replaced", rewindTo);
            case RecoveryDecision.Shrink shrink:
                return await Move(decision, shrink.Dp, shrink.From, "shrunk", rewindTo);
            default:
                return decision; // Continue: nothing changes; Fail: the grain ends the job; GrowBack: not decided on failures
        }
    }

    /// <summary>Takes an allocation of <paramref name="dp"/> replicas (or waits when the scheduler has none after all) and rebuilds there.</summary>
    private async Task<RecoveryDecision> Move(RecoveryDecision decision, int dp, RecoverySource from, string kind, long? rewindTo)
    {
        var widest = job.Submitted.WidestLayout;
        job.Spend(TimeUse.Allocate);
        var allocation = await scheduler.Reallocate(job.JobId, [dp], widest.Tp, widest.Pp);
        if (allocation is null)
        {
            var wait = new RecoveryDecision.Wait(job.Now + settings.RetryEvery, $"{decision.Reason}; the GPUs for dp={dp} were taken meanwhile");
            await job.BecomeWaiting(wait.RetryAt, wait.Reason);
            return wait;
        }
        return await Rebuild(decision, from, kind, allocation, rewindTo);
    }

    /// <summary>Rebuilds every rank from a recovery point (on <paramref name="moveTo"/> when given): a new incarnation.</summary>
    private async Task<RecoveryDecision> Rebuild(RecoveryDecision decision, RecoverySource from, string kind, JobAllocation? moveTo, long? rewindTo)
    {
        if (PointOf(from, rewindTo) is not var (rebuild, at, source))
            return new RecoveryDecision.Fail($"{decision.Reason}; no checkpoint of the job verifies");
        S.RestoresWithoutProgress++;
        points.DropInFlight();
        var before = Describe();
        await job.BecomeStarting(rebuild, at, kind,
            () => moveTo is null
                ? $"{decision.Reason}; rebuilding the ranks in place {source}"
                : $"{decision.Reason}: {before} → {Describe()}{(kind == "shrunk" ? "; global batch kept" : "")}; {source}",
            moveTo, rollBack: true);
        return decision;
    }

    /// <summary>The rebuild from a recovery point, where it puts the job, and what it is, in words.</summary>
    private (Rebuild Rebuild, JobCursor At, string Description)? PointOf(RecoverySource from, long? atMost)
    {
        switch (from)
        {
            case RecoverySource.Replicas:
                var replica = S.LastReplica!;
                var replicas = Abstractions.Rebuild.FromReplicas(new ReplicaSource(replica.Step, replica.Holders, replica.ManifestJson));
                return (replicas, replica.Cursor, $"{replicas} (each shard from its rank's server, or its peer's)");
            case RecoverySource.StageCheckpoint:
                var grown = Abstractions.Rebuild.GrowFrom(S.LastCheckpoint!.Directory);
                return (grown, job.Cursor, grown.ToString());
            case RecoverySource.Checkpoint:
                if (points.NewestValidCheckpoint(atMost) is not { } reader)
                    return null;
                var at = JobCursor.Of(reader.Manifest);
                S.LastCheckpoint = new PendingCheckpoint(at, reader.Directory, reader.Manifest.DataFingerprint, reader.Manifest.CreatedAt);
                return (Abstractions.Rebuild.FromCheckpoint(reader.Directory), at, RecoveryPoints.Describe(reader));
            default:
                return (Abstractions.Rebuild.Fresh, JobCursor.Start, Abstractions.Rebuild.Fresh.ToString());
        }
    }

    private JobSnapshot Snapshot(Failure? failure) => new(
        job.Phase,
        S.Rebuild?.Kind,
        S.RestoresWithoutProgress,
        job.DataParallelSize,
        job.Submitted.WidestLayout.Dp,
        job.Cursor.NextStep,
        S.LastReplica?.Step,
        points.NewestCheckpointStep(failure?.RewindTo),
        job.HasCheckpointDir,
        S.OutageSince,
        failure?.AtStep is { } step ? S.Anomalies.GetValueOrDefault(step) - 1 : 0);

    private Task<ClusterView> Survey()
    {
        var widest = job.Submitted.WidestLayout;
        return scheduler.Survey(job.JobId, job.Submitted.DataParallelChoices, widest.Tp, widest.Pp);
    }

    private string Describe() => $"{S.RankWorkers.Count} GPUs, layout {job.StageLayout}";

    private static TimeSpan Max(TimeSpan a, TimeSpan b) => a > b ? a : b;
}
