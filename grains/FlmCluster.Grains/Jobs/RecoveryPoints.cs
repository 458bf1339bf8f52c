using System.Text.Json;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Telemetry;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Jobs;

namespace FlmCluster.Grains.Jobs;

/// <summary>
/// A job's recovery points: persistent checkpoints (every worker snapshots and writes its shard in the
/// background; the coordinator commits the manifest once every shard is durable, then prunes the run's old ones)
/// and in-memory replicas (every worker keeps its shard — a checkpoint shard, in host memory — and sends a copy to
/// a peer on another server; the coordinator records the step with the shards' manifest once every copy arrived,
/// and tells workers to drop older ones). Steps go on while
/// both are written.
/// </summary>
public sealed class RecoveryPoints(JobStateMachine job, RankCalls ranks)
{
    private static readonly TimeSpan PollEvery = TimeSpan.FromMilliseconds(50);

    private DateTimeOffset _lastCheckpointPoll;
    private DateTimeOffset _lastReplicaPoll;

    /// <summary>A replica on its way (not persisted: after a coordinator restart it is simply not a recovery point).</summary>
    private ReplicaPoint? _replicaInFlight;

    private JobState S => job.State;

    /// <summary>
    /// Where a job starts: its seed, or the checkpoint it resumes from (verified now; checked against the job at
    /// submit). Its checkpoint folder becomes its run's (another run's checkpoints there are deleted only when the
    /// submission asked to overwrite them).
    /// </summary>
    public (Rebuild Rebuild, JobCursor At) StartingPoint()
    {
        var submission = S.Job!.Submission;
        var (rebuild, at) = (Rebuild.Fresh, JobCursor.Start);
        if (submission.ResumeFrom is { } resume)
        {
            var reader = CheckpointStore.Resolve(resume, (dir, why) => job.Log("checkpoint-rejected", $"{dir}: {why}"));
            job.Progress.CheckResume(reader);
            at = JobCursor.Of(reader.Manifest);
            // A committed checkpoint of this step exists: the end of a stage grows from it instead of saving again.
            S.LastCheckpoint = new PendingCheckpoint(at, reader.Directory, reader.Manifest.DataFingerprint, reader.Manifest.CreatedAt);
            job.Log("restoring", Describe(reader));
            rebuild = Rebuild.FromCheckpoint(reader.Directory);
        }
        if (job.HasCheckpointDir)
            foreach (var removed in CheckpointOwnership.Claim(job.Job.Job.Checkpoint.Dir, job.Run, submission.OverwriteCheckpoints, submission.ResumeFrom is null ? null : at.NextStep))
                job.Log("checkpoint-removed", $"{removed}: replaced by this run (--overwrite)");
        return (rebuild, at);
    }

    /// <summary>Commits or drops what is in flight once its pieces are done.</summary>
    public async Task Poll()
    {
        if (S.Pending is not null && Due(ref _lastCheckpointPoll))
            await PollCheckpoint();
        if (_replicaInFlight is not null && Due(ref _lastReplicaPoll))
            await PollReplica();
    }

    /// <summary>True once a committed checkpoint of the current step exists; until then starts or waits for one (steps wait).</summary>
    public async Task<bool> CheckpointedNow()
    {
        if (S.LastCheckpoint?.Step == job.Cursor.NextStep && S.Pending is null)
            return true;
        if (S.Pending is null)
            await BeginCheckpoint();
        return false;
    }

    /// <summary>Begins the checkpoint and the replica the committed step is due for; steps wait only for the snapshots.</summary>
    public async Task BeginDue()
    {
        var progress = job.Progress;
        if (S.Pending is null && progress.CheckpointDue(job.Cursor, S.SaveRequested))
        {
            job.Spend(TimeUse.CheckpointStall);
            await BeginCheckpoint();
            job.Spend(TimeUse.Overhead);
        }
        if (progress.ReplicaDue(job.Cursor) && CanReplicate)
        {
            job.Spend(TimeUse.CheckpointStall);
            await BeginReplica();
            job.Spend(TimeUse.Overhead);
        }
    }

    /// <summary>Every worker snapshots its rank now and writes its shard in the background; steps go on.</summary>
    public async Task BeginCheckpoint()
    {
        var at = job.Cursor;
        var root = job.Job.Job.Checkpoint.Dir;
        if (CheckpointStore.PrepareDirectory(root, at.NextStep) is not { } directory)
        {
            // Committed before this coordinator could record it (it moved to another silo meanwhile): take it as it is.
            var committed = CheckpointReader.Open(CheckpointStore.DirectoryFor(root, at.NextStep));
            if (committed.Manifest.Run != job.Run.RunId)
                throw new ClusterRequestException($"'{committed.Directory}' is a checkpoint of run {committed.Manifest.Run}, not of this job's run {job.Run.RunId}");
            S.LastCheckpoint = new PendingCheckpoint(at, committed.Directory, committed.Manifest.DataFingerprint, job.Now.UtcDateTime);
            S.SaveRequested = false;
            S.Time.RecordPoint(at.NextStep);
            job.Log("checkpoint", $"step {at.NextStep} was already committed to {committed.Directory}; kept");
            await job.Save();
            return;
        }
        var command = new SaveCommand(job.JobId, S.Incarnation, at.NextStep, directory);
        var began = job.Now;
        var fingerprints = await ranks.All((worker, _) => worker.BeginSave(command));
        RecoveryTelemetry.CheckpointStall(job.JobId, job.Now - began);
        S.Pending = new PendingCheckpoint(at, directory, fingerprints[0], began.UtcDateTime);
        S.SaveRequested = false;
        await job.Save();
    }

    private async Task PollCheckpoint()
    {
        var pending = S.Pending!;
        var statuses = await ranks.All((worker, _) => worker.SaveStatus(job.JobId, S.Incarnation, pending.Step));
        if (statuses.FirstOrDefault(s => s.Error is not null) is { } failed)
        {
            S.Pending = null;
            job.Log("checkpoint-failed", $"step {pending.Step}: {failed.Error}");
            await job.Save();
            return;
        }
        if (!statuses.All(s => s.Done))
            return;
        var shards = statuses.Select(s => JsonSerializer.Deserialize<WrittenShard>(s.ShardJson!, CheckpointManifest.Json)!).ToList();
        CheckpointStore.Commit(pending.Directory, job.Progress.Manifest(pending.Cursor, job.Run, job.JobId, pending.DataFingerprint, shards));
        var removed = job.Progress.Prune(job.Run);
        S.LastCheckpoint = pending;
        S.Pending = null;
        S.Time.RecordPoint(pending.Step);
        RecoveryTelemetry.CheckpointCommitted(job.JobId, pending.Step, shards.Sum(s => s.Shard.Bytes), pending.StartedAt, job.Now.UtcDateTime);
        job.Log("checkpoint", $"step {pending.Step} committed to {pending.Directory}: {shards.Sum(s => s.Shard.Bytes) / 1e6:0.0} MB in " +
            $"{(job.Now.UtcDateTime - pending.StartedAt).TotalSeconds:0.0} s{(removed.Count > 0 ? $", {removed.Count} old pruned" : "")}");
        await job.Save();
    }

    /// <summary>Whether a replica can be taken now: none in flight, and the ranks span two servers or more.</summary>
    public bool CanReplicate => _replicaInFlight is null && ReplicaPeers.For(job.Ranks, job.StageLayout) is not null;

    /// <summary>Every worker copies its rank to host memory now and sends the copy to its peer; steps go on.</summary>
    public async Task BeginReplica()
    {
        var workers = job.Ranks;
        var peers = ReplicaPeers.For(workers, job.StageLayout)!;
        var at = job.Cursor;
        var began = job.Now;
        await ranks.All((worker, rank) => worker.BeginReplica(new ReplicaCommand(job.JobId, S.Incarnation, at.NextStep, peers[rank])));
        RecoveryTelemetry.ReplicaStall(job.JobId, job.Now - began);
        _replicaInFlight = ReplicaPoint.Of(at, workers, peers, began.UtcDateTime);
    }

    private async Task PollReplica()
    {
        var pending = _replicaInFlight!;
        var statuses = await ranks.All((worker, _) => worker.GetReplicaStatus(job.JobId, S.Incarnation, pending.Step));
        if (statuses.FirstOrDefault(s => s.Error is not null) is { } failed)
        {
            _replicaInFlight = null;
            job.Log("replica-failed", $"step {pending.Step}: {failed.Error}");
            return;
        }
        if (!statuses.All(s => s.Done))
            return;
        // The shards of every rank make a checkpoint manifest, so that a rank of any layout can restore from them.
        var shards = statuses.Select(s => JsonSerializer.Deserialize<WrittenShard>(s.ShardJson!, CheckpointManifest.Json)!).ToList();
        var manifest = job.Progress.Manifest(pending.Cursor, job.Run, job.JobId, statuses[0].DataFingerprint!, shards);
        pending = pending with { ManifestJson = JsonSerializer.Serialize(manifest, CheckpointManifest.Json) };
        if (S.LastReplica is null)
            job.Log("replica", $"in-memory snapshots every {job.Job.Job.Checkpoint.MemoryInterval} steps, each rank's kept by a peer on another server: " +
                $"step {pending.Step}, {statuses.Sum(s => s.Bytes) / 1e6:0.0} MB in {(job.Now.UtcDateTime - pending.StartedAt).TotalSeconds:0.0} s");
        S.LastReplica = pending;
        _replicaInFlight = null;
        S.Time.RecordPoint(pending.Step);
        RecoveryTelemetry.ReplicaHeld(job.JobId, pending.Step, statuses.Sum(s => s.Bytes), pending.StartedAt, job.Now.UtcDateTime);
        await job.Save();
        await ranks.All((worker, _) => worker.ConfirmReplica(job.JobId, pending.Step));
    }

    /// <summary>The in-flight replica is void (its incarnation is gone).</summary>
    public void DropInFlight() => _replicaInFlight = null;

    /// <summary>
    /// The step of the newest checkpoint the job could restore from: its run's newest in its folder, or the last
    /// one it recorded (for a resumed job, the checkpoint it started from).
    /// </summary>
    public long? NewestCheckpointStep(long? atMost = null)
    {
        var limit = atMost ?? long.MaxValue;
        var onDisk = job.HasCheckpointDir
            ? CheckpointStore.List(job.Job.Job.Checkpoint.Dir).LastOrDefault(e => e.Valid && e.Run == job.Run.RunId && e.Step <= limit)?.Step
            : null;
        return new[] { onDisk, S.LastCheckpoint?.Step <= limit ? S.LastCheckpoint.Step : null }.Max();
    }

    /// <summary>
    /// The newest of those checkpoints (at or before <paramref name="atMost"/> when given) that verifies
    /// (manifest, sizes, checksums); bad ones are skipped and logged. Null when none does.
    /// </summary>
    public CheckpointReader? NewestValidCheckpoint(long? atMost = null)
    {
        void Rejected(string dir, string why) => job.Log("checkpoint-rejected", $"{dir}: {why}");
        var own = job.HasCheckpointDir ? CheckpointStore.NewestValid(job.Job.Job.Checkpoint.Dir, Rejected, job.Run.RunId, atMost) : null;
        if (S.LastCheckpoint is not { } last || last.Step > (atMost ?? long.MaxValue) || (own is not null && own.Manifest.Step >= last.Step))
            return own;
        try
        {
            return CheckpointStore.Resolve(last.Directory, Rejected);
        }
        catch (InvalidCheckpointException ex)
        {
            Rejected(last.Directory, ex.Message);
            return own;
        }
    }

    /// <summary>A checkpoint to restore from, in words: where, which step and data cursor, under which layout it was saved.</summary>
    public static string Describe(CheckpointReader reader)
    {
        var m = reader.Manifest;
        return $"from {reader.Directory}: step {m.Step}, data cursor {m.SamplesConsumed}, saved under dp={m.Layout.Dp},tp={m.Layout.Tp},pp={m.Layout.Pp}";
    }

    private bool Due(ref DateTimeOffset last)
    {
        if (job.Now - last < PollEvery)
            return false; // shards take a while; do not spin on them
        last = job.Now;
        return true;
    }
}
