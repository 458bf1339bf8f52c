using System.Diagnostics;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.DataPlane;
using FlmCluster.Grains.Placement;
using FlmCluster.Grains.Workers;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Growth;
using FlmCluster.Training.Parallel;
using FlmCluster.Training.Optim;
using FlmCluster.Training.Telemetry;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans.Runtime;
using Orleans.Storage;

namespace FlmCluster.Grains.Jobs;

/// <summary>What a coordinator persists: the job, where it stands (committed step, data cursor), its workers and history.</summary>
[GenerateSerializer, Alias("flm.JobState")]
public sealed class JobState
{
    [Id(0)] public JobSubmission? Submission { get; set; }
    [Id(1)] public DateTime SubmittedAt { get; set; }
    [Id(2)] public string State { get; set; } = JobStates.Queued;
    [Id(3)] public long NextStep { get; set; }
    [Id(4)] public long SamplesConsumed { get; set; }
    [Id(5)] public List<string> RankWorkers { get; set; } = [];
    [Id(6)] public int Incarnation { get; set; }
    [Id(7)] public List<JobEvent> Events { get; set; } = [];
    [Id(8)] public List<StepPoint> Recent { get; set; } = [];
    [Id(9)] public string? Error { get; set; }
    [Id(10)] public long AdamStep { get; set; }
    [Id(11)] public string? RestoreFrom { get; set; }
    [Id(12)] public PendingCheckpoint? Pending { get; set; }
    [Id(13)] public PendingCheckpoint? LastCheckpoint { get; set; }
    [Id(14)] public bool SaveRequested { get; set; }
    [Id(15)] public int Restores { get; set; }

    /// <summary>The newest step whose in-memory replicas every rank's peer holds.</summary>
    [Id(16)] public ReplicaPoint? LastReplica { get; set; }

    /// <summary>Set while workers are being rebuilt from the in-memory replicas of this step.</summary>
    [Id(17)] public long? RestoreFromReplica { get; set; }

    /// <summary>The growth stage being trained (0 for a job without stages) and the step it started at.</summary>
    [Id(18)] public int Stage { get; set; }
    [Id(19)] public long StageStartStep { get; set; }

    /// <summary>Set while workers are being rebuilt grown into <see cref="Stage"/> from this checkpoint of the stage before.</summary>
    [Id(20)] public string? GrowFrom { get; set; }

    /// <summary>At a stage's end: the loss of the next batch under the old model, to compare with the grown one's.</summary>
    [Id(21)] public double? LossBeforeGrowth { get; set; }
    [Id(22)] public DateTime? GrowthStartedAt { get; set; }

    /// <summary>The job fitted onto fewer GPUs after servers were lost for good (null: as submitted).</summary>
    [Id(23)] public string? ElasticJobJson { get; set; }

    /// <summary>A shrunk job found GPUs for more replicas: it checkpoints, then moves to this many.</summary>
    [Id(24)] public int? GrowBackDp { get; set; }
}

/// <summary>Where training stood at an in-memory snapshot.</summary>
[GenerateSerializer, Immutable, Alias("flm.ReplicaPoint")]
public sealed record ReplicaPoint(
    [property: Id(0)] long Step,
    [property: Id(1)] long SamplesConsumed,
    [property: Id(2)] long AdamStep,
    [property: Id(3)] DateTime StartedAt);

/// <summary>A checkpoint being written (or the last one committed): its step, folder and where training stood.</summary>
[GenerateSerializer, Immutable, Alias("flm.PendingCheckpoint")]
public sealed record PendingCheckpoint(
    [property: Id(0)] long Step,
    [property: Id(1)] string Directory,
    [property: Id(2)] long SamplesConsumed,
    [property: Id(3)] long AdamStep,
    [property: Id(4)] string DataFingerprint,
    [property: Id(5)] DateTime StartedAt);

/// <summary>
/// One job. Persists its spec and progress, assigns ranks to the workers the scheduler allocated, and drives
/// steps — one fan-out of the step to every worker, one fan-in of their reports, then a durable commit —
/// from a grain timer, one step per tick, so that status, pause and cancel are served between steps. A
/// reminder wakes it after a restart; on activation it resumes from its committed state (workers answer a
/// repeated step with the report they already sent).
/// </summary>
[ControlPlanePlacement]
public sealed class JobCoordinatorGrain(
    [PersistentState("job", FlmSiloBuilderExtensions.StorageName)] IPersistentState<JobState> store,
    IGrainFactory grains,
    IHostApplicationLifetime lifetime,
    FlmNodeOptions node,
    ILogger<JobCoordinatorGrain> log) : Grain, IJobCoordinatorGrain, IRemindable
{
    private const int RecentLimit = 200;
    private const int EventLimit = 200;
    private const string ReminderName = "keep-running";

    private JobConfig? _job;
    private LrSchedule? _schedule;
    private IGrainTimer? _timer;
    private DateTime _lastPoll;
    private DateTime _lastReplicaPoll;
    private ReplicaPoint? _pendingReplica;
    private DateTime _retryAt;
    private DateTime? _waitingSince;
    private DateTime _lastGrowBackCheck = DateTime.UtcNow;

    private const int RestoreLimit = 3;

    private JobState S => store.State;
    private string JobId => this.GetPrimaryKeyString();
    private IReadOnlyList<ResolvedStage>? _stages;

    /// <summary>The whole job (every stage, the checkpoint policy), with the layouts it runs under now.</summary>
    private JobConfig Job => _job ??= JobValidator.Validate(JobConfigLoader.FromJson(S.ElasticJobJson ?? S.Submission!.JobJson, $"job {JobId}"));
    private IReadOnlyList<ResolvedStage> Stages => _stages ??= GrowthSchedule.Resolve(Job);

    /// <summary>The stage being trained: its shape, layout, batch and LR schedule.</summary>
    private ResolvedStage Stage => Stages[S.Stage];
    private JobConfig StageJob => Stage.Job;
    private long StageEnd => S.StageStartStep + StageJob.Train.Steps;
    private LrSchedule Schedule => _schedule ??= new LrSchedule(StageJob.Optimizer, StageJob.Train.Steps);
    private double MaskAt(long step) => Stage.Ramp.ValueAt(step - S.StageStartStep);

    /// <summary>
    /// The workers of the stage's ranks. The job holds enough workers for its widest stage; a narrower stage
    /// uses the first ones.
    /// </summary>
    private List<string> Ranks => S.RankWorkers.Take(ParallelLayout.FromConfig(StageJob.Layout).WorldSize).ToList();

    public override async Task OnActivateAsync(CancellationToken cancellationToken)
    {
        if (S.State is JobStates.Running or JobStates.Starting)
        {
            Log("resumed", $"coordinator activated on {RuntimeIdentity}; continuing from committed step {S.NextStep}");
            await store.WriteStateAsync(cancellationToken);
            EnsureTimer();
        }
    }

    public async Task Initialize(JobSubmission submission, DateTime submittedAt)
    {
        if (store.RecordExists)
            return;
        if (GrowthSchedule.ClusterProblem(JobConfigLoader.FromJson(submission.JobJson, "the submitted job")) is { } problem)
            throw new ClusterRequestException(problem);
        S.Submission = submission;
        S.SubmittedAt = submittedAt;
        S.State = JobStates.Queued;
        Log("submitted", $"{submission.Name}: layout dp={submission.Dp},tp={submission.Tp},pp={submission.Pp}, {submission.Steps} steps, priority {submission.Priority}");
        await store.WriteStateAsync();
    }

    public async Task Start(JobAllocation allocation)
    {
        if (S.State != JobStates.Queued)
            return;
        S.RankWorkers = [.. allocation.RankWorkers];
        S.Incarnation++;
        S.State = JobStates.Starting;
        Log("allocated", $"ranks 0-{allocation.RankWorkers.Count - 1} on {string.Join(", ", allocation.RankWorkers)}");
        if (S.Submission!.ResumeFrom is { } from && S.NextStep == 0)
        {
            try
            {
                RestorePoint(CheckpointStore.Resolve(from, (dir, why) => Log("checkpoint-rejected", $"{dir}: {why}")));
            }
            catch (Exception ex) when (ex is InvalidCheckpointException or FlmCluster.Training.FlmUserException)
            {
                await Finish(JobStates.Failed, $"cannot resume from {from}: {ex.Message}");
                return;
            }
        }
        await store.WriteStateAsync();
        await this.RegisterOrUpdateReminder(ReminderName, TimeSpan.FromMinutes(1), TimeSpan.FromMinutes(1));
        EnsureTimer();
    }

    public Task<JobStatus> GetStatus()
    {
        var sub = S.Submission ?? throw new ClusterRequestException($"no job '{JobId}'");
        var layout = StageJob.Layout;
        return Task.FromResult(new JobStatus(JobId, sub.Name, S.State, S.NextStep, sub.Steps, $"dp={layout.Dp},tp={layout.Tp},pp={layout.Pp}",
            Ranks, S.Recent.ToList(), S.Events.TakeLast(50).ToList(), S.Error, sub.Priority, S.SubmittedAt, Stages.Count > 1 ? Stage.Name : "main",
            string.IsNullOrWhiteSpace(Job.Checkpoint.Dir) ? null : Job.Checkpoint.Dir, S.LastCheckpoint?.Step, S.LastReplica?.Step));
    }

    public async Task Cancel(string reason)
    {
        if (S.Submission is null || JobStates.IsFinal(S.State))
            return;
        await Finish(JobStates.Cancelled, reason);
    }

    public async Task Pause()
    {
        if (S.State != JobStates.Running)
            throw new ClusterRequestException($"job {JobId} is {S.State}; only a running job can be paused");
        S.State = JobStates.Paused;
        Log("paused", $"paused before step {S.NextStep}");
        await store.WriteStateAsync();
    }

    public async Task Resume()
    {
        if (S.State != JobStates.Paused)
            throw new ClusterRequestException($"job {JobId} is {S.State}; only a paused job can be resumed");
        S.State = JobStates.Running;
        Log("resumed", $"resumed at step {S.NextStep}");
        await store.WriteStateAsync();
        EnsureTimer();
    }

    public async Task SaveCheckpoint()
    {
        if (S.Submission is null)
            throw new ClusterRequestException($"no job '{JobId}'");
        if (string.IsNullOrWhiteSpace(Job.Checkpoint.Dir))
            throw new ClusterRequestException($"job {JobId} has no checkpoint.dir; submit it with --set checkpoint.dir=DIR");
        if (S.State is not (JobStates.Running or JobStates.Starting or JobStates.Paused))
            throw new ClusterRequestException($"job {JobId} is {S.State}");
        S.SaveRequested = true;
        await store.WriteStateAsync();
    }

    public Task ReceiveReminder(string reminderName, TickStatus status)
    {
        if (S.State is JobStates.Running or JobStates.Starting)
            EnsureTimer();
        else if (JobStates.IsFinal(S.State) || S.Submission is null)
            return this.UnregisterReminderIfExists(ReminderName);
        return Task.CompletedTask;
    }

    private void EnsureTimer() =>
        _timer ??= this.RegisterGrainTimer(Tick, new GrainTimerCreationOptions
        {
            DueTime = TimeSpan.Zero,
            Period = TimeSpan.FromMilliseconds(1),
            Interleave = false,
            KeepAlive = true,
        });

    private void StopTimer()
    {
        _timer?.Dispose();
        _timer = null;
    }

    private async Task Tick(CancellationToken cancellationToken)
    {
        if (DateTime.UtcNow < _retryAt)
            return;
        try
        {
            switch (S.State)
            {
                case JobStates.Starting:
                    await AssignWorkers();
                    break;
                case JobStates.Running:
                    await RunningTick();
                    break;
                default:
                    StopTimer();
                    break;
            }
        }
        catch (InconsistentStateException ex)
        {
            // The job's state changed on storage after this activation read it: the last write of an activation
            // on a silo that was just declared dead. Take that state (workers answer a repeated step with the
            // report they already sent) and go on.
            await store.ReadStateAsync();
            Log("state-reloaded", $"{ex.Message}; continuing from committed step {S.NextStep}");
        }
        catch (Exception ex) when (lifetime.ApplicationStopping.IsCancellationRequested || cancellationToken.IsCancellationRequested)
        {
            // This silo is going away, and its calls fail for that reason alone: the job is not at fault. It
            // continues on another silo from its committed state (a reminder, or the next call, activates it).
            log.LogInformation("Job {Job}: coordinator stopping with its silo at step {Step} ({Message})", JobId, S.NextStep, ex.Message);
            StopTimer();
        }
        catch (Exception ex)
        {
            var message = ex is AggregateException agg ? agg.InnerExceptions[0].Message : ex.Message;
            if (S.RestoreFromReplica is not null && message.Contains(ReplicaStore.Unavailable, StringComparison.Ordinal))
            {
                // A rank and its peer were both lost: the replicas cannot rebuild the job; a checkpoint on disk may.
                Log("replica-unavailable", message);
                S.LastReplica = null;
                S.RestoreFromReplica = null;
                if (await TryRestore(message))
                    return;
            }
            if (IsWorkerLoss(ex, message))
            {
                // Workers lost their state (their server restarted or died): rebuild from a checkpoint once the
                // servers are back; while they are away, retry with backoff for a while.
                if (S.State == JobStates.Running && await TryRestore(message))
                    return;
                if (S.State == JobStates.Starting && (!string.IsNullOrWhiteSpace(Job.Checkpoint.Dir) || S.RestoreFromReplica is not null))
                {
                    if (_waitingSince is null)
                        Log("workers-lost", $"{message}; waiting up to {node.WorkerWait.TotalSeconds:0} s for the servers to come back");
                    _waitingSince ??= DateTime.UtcNow;
                    if (DateTime.UtcNow - _waitingSince < node.WorkerWait)
                    {
                        _retryAt = DateTime.UtcNow.AddSeconds(1);
                        return;
                    }
                    if (await TryShrink(message))
                        return;
                }
            }
            log.LogError(ex, "Job {Job} failed at step {Step}", JobId, S.NextStep);
            await Finish(JobStates.Failed, message);
        }
    }

    /// <summary>
    /// Whether a failure means workers lost their state (their silo died, stopped or restarted). A grain call
    /// cancelled by the runtime — not by this coordinator's own shutdown, handled before — is one whose
    /// target silo went away; a call or a collective that timed out waited on a worker that is gone or hung.
    /// Either way the ranks are rebuilt from the newest recovery point (at most RestoreLimit times).
    /// </summary>
    private static bool IsWorkerLoss(Exception ex, string message) =>
        ex is SiloUnavailableException or OperationCanceledException or TimeoutException
        || (ex as AggregateException)?.InnerExceptions[0] is SiloUnavailableException or OperationCanceledException or TimeoutException
        || message.Contains("does not hold job", StringComparison.Ordinal)
        || message.Contains(WorkerMailbox.LeftJob, StringComparison.Ordinal)
        || message.Contains("became unavailable", StringComparison.Ordinal)
        || message.Contains("No active silo for node", StringComparison.Ordinal);

    /// <summary>A step, a checkpoint in progress, or the end of training.</summary>
    private async Task RunningTick()
    {
        if (S.Pending is not null)
            await PollCheckpoint();
        if (_pendingReplica is not null)
            await PollReplica();
        var checkpoints = !string.IsNullOrWhiteSpace(Job.Checkpoint.Dir);
        if (S.NextStep >= S.Submission!.Steps)
        {
            // The job ends with a checkpoint of its final state when it has a checkpoint folder.
            if (checkpoints && S.LastCheckpoint?.Step != S.NextStep)
            {
                if (S.Pending is null)
                    await BeginCheckpoint();
                return;
            }
            if (S.Pending is null)
                await Finish(JobStates.Completed, $"all {S.NextStep} steps done; last loss {S.Recent.LastOrDefault()?.Loss:0.0000}");
            return;
        }
        if (S.NextStep >= StageEnd)
        {
            await EndStage();
            return;
        }
        if (await GrowBack())
            return;
        await RunOneStep();
        // The end of a stage or of the job saves anyway.
        var interval = Job.Checkpoint.Interval;
        if (checkpoints && S.Pending is null && (S.SaveRequested || (interval > 0 && S.NextStep % interval == 0)) && S.NextStep < StageEnd)
            await BeginCheckpoint();
        var memory = Job.Checkpoint.MemoryInterval;
        if (memory > 0 && _pendingReplica is null && S.NextStep % memory == 0 && S.NextStep < StageEnd && ReplicaPeers.For(Ranks) is { } peers)
            await BeginReplica(peers);
    }

    /// <summary>
    /// The end of a growth stage, one orchestrated operation: the loss of the next batch under the old model,
    /// a checkpoint of the stage (committed before anything changes, so a failure at any point resumes from it),
    /// then every worker rebuilds its rank in the next stage's shape and layout, grown from that checkpoint.
    /// </summary>
    private async Task EndStage()
    {
        if (S.LossBeforeGrowth is null)
        {
            S.GrowthStartedAt = DateTime.UtcNow;
            S.LossBeforeGrowth = await Evaluate(MaskAt(S.NextStep));
            await store.WriteStateAsync();
        }
        if (!await CheckpointedNow())
            return;
        var from = Stage;
        S.GrowFrom = S.LastCheckpoint!.Directory;
        S.Stage++;
        S.StageStartStep = S.NextStep;
        _schedule = null;
        // Replicas hold the old shape: no use from here on.
        S.LastReplica = null;
        _pendingReplica = null;
        S.Incarnation++;
        S.State = JobStates.Starting;
        Log("growing", $"stage {from.Name} → {Stage.Name} at step {S.NextStep}: workers grow from {S.GrowFrom}");
        await store.WriteStateAsync();
    }

    /// <summary>True once a committed checkpoint of the current step exists; until then, starts or waits for one (steps wait).</summary>
    private async Task<bool> CheckpointedNow()
    {
        if (S.LastCheckpoint?.Step == S.NextStep && S.Pending is null)
            return true;
        if (S.Pending is null)
            await BeginCheckpoint();
        return false;
    }

    /// <summary>The job as submitted, before any shrinking.</summary>
    private JobConfig Submitted => _submitted ??= JobValidator.Validate(JobConfigLoader.FromJson(S.Submission!.JobJson, $"job {JobId}"));
    private JobConfig? _submitted;

    /// <summary>
    /// Data-parallel sizes of the widest stage, between <paramref name="from"/> and <paramref name="to"/> (both
    /// inclusive, largest first), that the submitted job fits into using every GPU they ask for.
    /// </summary>
    private List<int> ReplicaChoices(int from, int to)
    {
        var submitted = Submitted;
        var widest = GrowthSchedule.WidestLayout(submitted);
        return Enumerable.Range(to, Math.Max(0, from - to + 1)).Reverse()
            .Where(dp => ElasticLayout.Fit(submitted, dp * widest.Tp * widest.Pp) is { } fits && GrowthSchedule.WidestLayout(fits).WorldSize == dp * widest.Tp * widest.Pp)
            .ToList();
    }

    /// <summary>
    /// A shrunk job looks for GPUs again every Flm:WorkerWaitSeconds (returned servers, or ones other jobs freed).
    /// When more replicas fit, it checkpoints the current step, takes the larger allocation and continues from
    /// that checkpoint in the larger layout. True while steps must wait for that.
    /// </summary>
    private async Task<bool> GrowBack()
    {
        if (S.ElasticJobJson is null || (S.GrowBackDp is null && DateTime.UtcNow - _lastGrowBackCheck < node.WorkerWait))
            return false;
        var widest = GrowthSchedule.WidestLayout(Submitted);
        var current = GrowthSchedule.WidestLayout(Job).Dp;
        if (S.GrowBackDp is null)
        {
            _lastGrowBackCheck = DateTime.UtcNow;
            var choices = ReplicaChoices(widest.Dp, current + 1);
            if (choices.Count == 0 || await Scheduler.LargestFit(JobId, choices, widest.Tp, widest.Pp) is not { } dp)
                return false;
            S.GrowBackDp = dp;
            Log("growing-back", $"GPUs for dp={dp} are free again; checkpointing step {S.NextStep} to move there");
            await store.WriteStateAsync();
        }
        if (!await CheckpointedNow())
            return true;
        var allocation = await Scheduler.Reallocate(JobId, ReplicaChoices(widest.Dp, current + 1), widest.Tp, widest.Pp);
        S.GrowBackDp = null;
        if (allocation is null)
        {
            Log("growing-back", "the GPUs were taken meanwhile; staying as is");
            await store.WriteStateAsync();
            return false;
        }
        var reader = CheckpointReader.Open(S.LastCheckpoint!.Directory);
        var before = $"{S.RankWorkers.Count} GPUs, layout {ParallelLayout.FromConfig(StageJob.Layout)}";
        MoveTo(allocation);
        Log("grown-back", $"{before} → {S.RankWorkers.Count} GPUs, layout {ParallelLayout.FromConfig(StageJob.Layout)}");
        RestorePoint(reader);
        S.Incarnation++;
        S.State = JobStates.Starting;
        await store.WriteStateAsync();
        return true;
    }

    /// <summary>Takes a new allocation and the layouts that fit it (the submitted ones when it is whole again).</summary>
    private void MoveTo(JobAllocation allocation)
    {
        var submitted = Submitted;
        var fitted = ElasticLayout.Fit(submitted, allocation.RankWorkers.Count)!;
        var whole = GrowthSchedule.WidestLayout(fitted).WorldSize == GrowthSchedule.WidestLayout(submitted).WorldSize;
        S.ElasticJobJson = whole ? null : JobConfigLoader.ToJson(fitted);
        _job = null;
        _stages = null;
        _schedule = null;
        S.RankWorkers = [.. allocation.RankWorkers];
        S.Pending = null;
        S.LastReplica = null;
        _pendingReplica = null;
        S.RestoreFromReplica = null;
    }

    private IClusterSchedulerGrain Scheduler => grains.GetGrain<IClusterSchedulerGrain>(ClusterSchedulerKey);

    /// <summary>Mean token loss of the next global batch under the workers' current model, without training.</summary>
    private async Task<double> Evaluate(double maskValue)
    {
        var sums = await FanOut(worker => worker.Evaluate(JobId, S.Incarnation, S.SamplesConsumed, maskValue));
        return sums.Sum(x => x.Sum) / Math.Max(1, sums.Sum(x => x.Tokens));
    }

    /// <summary>Every worker copies its rank to host memory now and sends the copy to its peer; steps go on.</summary>
    private async Task BeginReplica(string[] peers)
    {
        var step = S.NextStep;
        await Task.WhenAll(Ranks.Select((_, rank) => Worker(rank).BeginReplica(new ReplicaCommand(JobId, S.Incarnation, step, peers[rank]))));
        _pendingReplica = new ReplicaPoint(step, S.SamplesConsumed, S.AdamStep, DateTime.UtcNow);
    }

    /// <summary>Records the pending in-memory snapshot once every peer holds its replica.</summary>
    private async Task PollReplica()
    {
        var pending = _pendingReplica!;
        if (DateTime.UtcNow - _lastReplicaPoll < TimeSpan.FromMilliseconds(50))
            return;
        _lastReplicaPoll = DateTime.UtcNow;
        var statuses = await Task.WhenAll(Ranks.Select((_, rank) => Worker(rank).GetReplicaStatus(JobId, S.Incarnation, pending.Step)));
        if (statuses.FirstOrDefault(s => s.Error is not null) is { } failed)
        {
            _pendingReplica = null;
            Log("replica-failed", $"step {pending.Step}: {failed.Error}");
            return;
        }
        if (!statuses.All(s => s.Done))
            return;
        if (S.LastReplica is null)
            Log("replica", $"in-memory snapshots every {Job.Checkpoint.MemoryInterval} steps, each rank's kept by its peer on the next server: " +
                $"step {pending.Step}, {statuses.Sum(s => s.Bytes) / 1e6:0.0} MB in {(DateTime.UtcNow - pending.StartedAt).TotalSeconds:0.0} s");
        S.LastReplica = pending;
        _pendingReplica = null;
        await store.WriteStateAsync();
        await Task.WhenAll(Ranks.Select((_, rank) => Worker(rank).ConfirmReplica(JobId, pending.Step)));
    }

    /// <summary>For every rank, the workers holding its replicas: its own, then its peer.</summary>
    private List<IReadOnlyList<string>> ReplicaHolders()
    {
        var ranks = Ranks;
        var peers = ReplicaPeers.For(ranks) ?? [];
        return ranks.Select((worker, rank) => (IReadOnlyList<string>)(peers.Length > 0 ? [worker, peers[rank]] : [worker])).ToList();
    }

    /// <summary>Every worker snapshots its rank now and writes its shard in the background; steps go on.</summary>
    private async Task BeginCheckpoint()
    {
        var directory = CheckpointStore.DirectoryFor(Job.Checkpoint.Dir, S.NextStep);
        if (Directory.Exists(directory) && !File.Exists(Path.Combine(directory, CheckpointReader.ManifestFile)))
            Directory.Delete(directory, recursive: true);
        Directory.CreateDirectory(directory);
        var command = new SaveCommand(JobId, S.Incarnation, S.NextStep, directory);
        var fingerprints = await Task.WhenAll(Ranks.Select((_, rank) => Worker(rank).BeginSave(command)));
        S.Pending = new PendingCheckpoint(S.NextStep, directory, S.SamplesConsumed, S.AdamStep, fingerprints[0], DateTime.UtcNow);
        S.SaveRequested = false;
        await store.WriteStateAsync();
    }

    /// <summary>Commits the pending checkpoint (manifest last) once every shard is durable.</summary>
    private async Task PollCheckpoint()
    {
        var pending = S.Pending!;
        if (DateTime.UtcNow - _lastPoll < TimeSpan.FromMilliseconds(50))
            return; // shards take a while; do not spin on them
        _lastPoll = DateTime.UtcNow;
        var statuses = await Task.WhenAll(Ranks.Select((_, rank) => Worker(rank).SaveStatus(JobId, S.Incarnation, pending.Step)));
        if (statuses.FirstOrDefault(s => s.Error is not null) is { } failed)
        {
            S.Pending = null;
            Log("checkpoint-failed", $"step {pending.Step}: {failed.Error}");
            await store.WriteStateAsync();
            return;
        }
        if (!statuses.All(s => s.Done))
            return;
        var shards = statuses.Select(s => System.Text.Json.JsonSerializer.Deserialize<WrittenShard>(s.ShardJson!, CheckpointManifest.Json)!).ToList();
        var manifest = new CheckpointManifest
        {
            JobId = JobId,
            JobJson = JobConfigLoader.ToJson(Job),
            CreatedAt = DateTime.UtcNow,
            Stage = S.Stage,
            StageStartStep = S.StageStartStep,
            Growth = MaskAt(pending.Step) < 1.0 ? GrowthSchedule.ShapeOf(Stages, S.Stage) : null,
            MaskValue = MaskAt(pending.Step),
            Step = pending.Step,
            SamplesConsumed = pending.SamplesConsumed,
            AdamStep = pending.AdamStep,
            NextLr = Schedule.At(pending.Step - S.StageStartStep),
            DataFingerprint = pending.DataFingerprint,
            DataSeed = Job.Data.Seed,
            TrainSeed = Job.Train.Seed,
            Layout = StageJob.Layout,
            Shards = shards.Select(s => s.Shard).OrderBy(s => s.Rank).ToList(),
            Tensors = ShardWriter.Merge(shards),
        };
        CheckpointStore.Commit(pending.Directory, manifest);
        var removed = CheckpointStore.Prune(Job.Checkpoint.Dir, Job.Checkpoint.KeepLast, Job.Checkpoint.KeepEvery * Math.Max(1, Job.Checkpoint.Interval));
        S.LastCheckpoint = pending;
        S.Pending = null;
        Log("checkpoint", $"step {pending.Step} committed to {pending.Directory}: {shards.Sum(s => s.Shard.Bytes) / 1e6:0.0} MB in {(DateTime.UtcNow - pending.StartedAt).TotalSeconds:0.0} s{(removed.Count > 0 ? $", {removed.Count} old pruned" : "")}");
        await store.WriteStateAsync();
    }

    /// <summary>Sets the job to continue from a checkpoint (steps after it are redone with the same samples).</summary>
    private void RestorePoint(CheckpointReader reader)
    {
        var m = reader.Manifest;
        if (m.Stage < 0 || m.Stage >= Stages.Count)
            throw new FlmCluster.Training.FlmUserException($"checkpoint '{reader.Directory}' is at stage {m.Stage}, but the job has {Stages.Count} stage(s)");
        CheckpointRestore.CheckCompatible(reader, Stages[m.Stage].Job.Model, Job.Tokenizer);
        S.Stage = m.Stage;
        S.StageStartStep = m.StageStartStep;
        _schedule = null;
        S.GrowFrom = null;
        S.LossBeforeGrowth = null;
        S.NextStep = m.Step;
        S.SamplesConsumed = m.SamplesConsumed;
        S.AdamStep = m.AdamStep;
        S.RestoreFrom = reader.Directory;
        // A committed checkpoint of this step exists: the end of a stage grows from it instead of saving again.
        S.LastCheckpoint = new PendingCheckpoint(m.Step, reader.Directory, m.SamplesConsumed, m.AdamStep, m.DataFingerprint, m.CreatedAt);
        S.Recent.RemoveAll(p => p.Step >= m.Step);
        Log("restoring", $"from {reader.Directory}: step {m.Step}, data cursor {m.SamplesConsumed}, saved under dp={m.Layout.Dp},tp={m.Layout.Tp},pp={m.Layout.Pp}");
    }

    /// <summary>Workers lost the job (e.g. their servers restarted): rebuild them from the newest valid checkpoint.</summary>
    private async Task<bool> TryRestore(string why)
    {
        if (S.Restores >= RestoreLimit)
            return false;
        var disk = !string.IsNullOrWhiteSpace(Job.Checkpoint.Dir);
        // The newer of the in-memory replicas and the newest checkpoint on disk (checksums checked only if used);
        // at the same step the replicas, which load without touching storage.
        var newestOnDisk = disk ? CheckpointStore.List(Job.Checkpoint.Dir).LastOrDefault(e => e.Valid)?.Step : null;
        if (S.LastReplica is { } replica && replica.Step >= (newestOnDisk ?? -1))
        {
            S.Restores++;
            Log("workers-lost", why);
            S.Pending = null;
            _pendingReplica = null;
            S.NextStep = replica.Step;
            S.SamplesConsumed = replica.SamplesConsumed;
            S.AdamStep = replica.AdamStep;
            S.RestoreFrom = null;
            S.RestoreFromReplica = replica.Step;
            S.LossBeforeGrowth = null;
            S.Recent.RemoveAll(p => p.Step >= replica.Step);
            Log("restoring", $"from the in-memory replicas of step {replica.Step} (each rank's own copy, or its peer's)");
            S.Incarnation++;
            S.State = JobStates.Starting;
            await store.WriteStateAsync();
            return true;
        }
        if (!disk)
            return false;
        var reader = CheckpointStore.NewestValid(Job.Checkpoint.Dir, (dir, reason) => Log("checkpoint-rejected", $"{dir}: {reason}"));
        if (reader is null)
            return false;
        S.Restores++;
        Log("workers-lost", why);
        S.Pending = null;
        _pendingReplica = null;
        S.RestoreFromReplica = null;
        RestorePoint(reader);
        S.Incarnation++;
        S.State = JobStates.Starting;
        await store.WriteStateAsync();
        return true;
    }

    /// <summary>
    /// Servers stayed away longer than the wait: continue on the GPUs that remain (and free ones) with fewer
    /// data-parallel replicas — same tensor and pipeline split, same global batch by more micro-batches, so the
    /// same samples per step — from the newest valid checkpoint, loaded into the smaller layout.
    /// </summary>
    private async Task<bool> TryShrink(string why)
    {
        if (S.Restores >= RestoreLimit || string.IsNullOrWhiteSpace(Job.Checkpoint.Dir))
            return false;
        var reader = CheckpointStore.NewestValid(Job.Checkpoint.Dir, (dir, reason) => Log("checkpoint-rejected", $"{dir}: {reason}"));
        if (reader is null)
            return false;
        var widest = GrowthSchedule.WidestLayout(Submitted);
        var choices = ReplicaChoices(GrowthSchedule.WidestLayout(Job).Dp - 1, 1);
        if (choices.Count == 0)
            return false;
        var allocation = await Scheduler.Reallocate(JobId, choices, widest.Tp, widest.Pp);
        if (allocation is null)
            return false;
        var before = $"{S.RankWorkers.Count} GPUs, layout {ParallelLayout.FromConfig(StageJob.Layout)}";
        MoveTo(allocation);
        S.Restores++;
        _lastGrowBackCheck = DateTime.UtcNow;
        Log("shrunk", $"servers gone for more than {node.WorkerWait.TotalSeconds:0} s ({why}): {before} → {S.RankWorkers.Count} GPUs, layout {ParallelLayout.FromConfig(StageJob.Layout)}; global batch kept");
        RestorePoint(reader);
        S.Incarnation++;
        S.State = JobStates.Starting;
        _waitingSince = null;
        await store.WriteStateAsync();
        return true;
    }

    private IGpuWorkerGrain Worker(int rank) => grains.GetGrain<IGpuWorkerGrain>(S.RankWorkers[rank]);

    /// <summary>
    /// Calls every rank's worker at once for work that uses collectives. When one fails, the others are told to
    /// stop (they would wait for the failed peer until the collective timeout) and the root cause is thrown —
    /// a lost worker first — not a peer's echo of it.
    /// </summary>
    private async Task<T[]> FanOut<T>(Func<IGpuWorkerGrain, Task<T>> call)
    {
        var ranks = Ranks;
        var tasks = ranks.Select((_, rank) => call(Worker(rank))).ToList();
        var pending = new List<Task<T>>(tasks);
        while (pending.Count > 0)
        {
            var done = await Task.WhenAny(pending);
            pending.Remove(done);
            if (done.IsCompletedSuccessfully)
                continue;
            var incarnation = S.Incarnation;
            await Task.WhenAll(ranks.Select(async (_, rank) =>
            {
                try
                {
                    await Worker(rank).Abort(JobId, incarnation);
                }
                catch (Exception ex)
                {
                    log.LogDebug("Job {Job}: abort of rank {Rank}: {Message}", JobId, rank, ex.Message); // a lost worker has nothing to stop
                }
            }));
            try
            {
                await Task.WhenAll(tasks);
            }
            catch
            {
                // inspected below
            }
            var failures = tasks.Where(t => t.IsFaulted).Select(t => t.Exception!.InnerException!).ToList();
            if (failures.Count == 0)
                await done; // cancelled
            var causes = failures.Where(e => !WorkerMailbox.IsEcho(e)).ToList();
            // Only echoes: a worker left the job by itself (its silo is stopping), which is a lost worker too.
            var root = causes.FirstOrDefault(e => IsWorkerLoss(e, e.Message)) ?? causes.FirstOrDefault() ?? failures[0];
            System.Runtime.ExceptionServices.ExceptionDispatchInfo.Capture(root).Throw();
        }
        return tasks.Select(t => t.Result).ToArray();
    }

    private async Task AssignWorkers()
    {
        var watch = Stopwatch.StartNew();
        var json = JobConfigLoader.ToJson(Job);
        var replicas = S.RestoreFromReplica is { } step ? new ReplicaSource(step, ReplicaHolders()) : null;
        var ranks = Ranks;
        await Task.WhenAll(ranks.Select((_, rank) =>
            Worker(rank).Assign(new WorkerAssignment(JobId, S.Incarnation, json, rank, ranks, S.NextStep, S.SamplesConsumed, S.RestoreFrom, replicas,
                S.Stage, S.GrowFrom))));
        if (S.GrowFrom is not null)
            await ReportGrowth(watch.Elapsed);
        if (S.LastReplica is null && Job.Checkpoint.MemoryInterval > 0 && ReplicaPeers.For(ranks) is null)
            Log("replica-off", "checkpoint.memory_interval is set but all ranks are on one server, where a replica would die with its rank");
        S.State = JobStates.Running;
        S.RestoreFrom = null;
        S.RestoreFromReplica = null;
        _waitingSince = null;
        Log("started", $"{ranks.Count} workers built their model slices{(Stages.Count > 1 ? $" for stage {Stage.Name}" : "")} in {watch.Elapsed.TotalSeconds:0.0} s");
        await store.WriteStateAsync();
    }

    /// <summary>The grown model's loss on the batch measured before growth: equal when growth preserved the function.</summary>
    private async Task ReportGrowth(TimeSpan rebuild)
    {
        var before = S.LossBeforeGrowth ?? double.NaN;
        var after = await Evaluate(MaskAt(S.NextStep));
        var (from, to) = (Stages[S.Stage - 1], Stage);
        static string Shape(ModelConfig m) => $"{m.Layers} layers × {m.Hidden} ({m.Heads} heads, FFN {m.FfnSize}), {m.ParameterCount:N0} parameters";
        static string LayoutOf(JobConfig j) => ParallelLayout.FromConfig(j.Layout).ToString();
        var took = S.GrowthStartedAt is { } started ? (DateTime.UtcNow - started).TotalSeconds : rebuild.TotalSeconds;
        Log("growth", $"{from.Name} → {to.Name} at step {S.NextStep}: {Shape(from.Job.Model)} → {Shape(to.Job.Model)}, layout {LayoutOf(from.Job)} → {LayoutOf(to.Job)}; " +
            $"loss of the next batch {before:0.000000} before, {after:0.000000} after (difference {after - before:+0.0e+00;-0.0e+00;0}); masks ramp over {to.Ramp.Steps} steps; {took:0.0} s");
        S.GrowFrom = null;
        S.LossBeforeGrowth = null;
        S.GrowthStartedAt = null;
    }

    private async Task RunOneStep()
    {
        using var activity = FlmTelemetry.Source.StartActivity("job.step");
        activity?.SetTag("job", JobId);
        activity?.SetTag("step", S.NextStep);
        var step = new WorkerStep(JobId, S.Incarnation, S.NextStep, S.SamplesConsumed, Schedule.At(S.NextStep - S.StageStartStep), MaskAt(S.NextStep));
        var watch = Stopwatch.StartNew();
        var reports = await FanOut(worker => worker.RunStep(step));
        var elapsed = watch.Elapsed;
        var lossRanks = reports.Where(r => r.ReportsLoss).ToList();
        var tokens = lossRanks.Sum(r => r.Tokens);
        var loss = lossRanks.Sum(r => r.LossSum) / Math.Max(1, tokens);
        var comm = reports.Average(r => r.CommMs / Math.Max(1e-9, r.ElapsedMs));
        var point = new StepPoint(step.Step, loss, tokens / elapsed.TotalSeconds, elapsed.TotalMilliseconds, reports[0].GradNorm, comm,
            step.Lr, tokens, reports[0].Skipped, Stages.Count > 1 ? Stage.Name : "main");
        // Commit: the step counts once the durable state says so.
        S.NextStep = step.Step + 1;
        S.SamplesConsumed += StageJob.Train.GlobalBatch;
        if (!reports[0].Skipped)
            S.AdamStep++;
        S.Recent.Add(point);
        if (S.Recent.Count > RecentLimit)
            S.Recent.RemoveRange(0, S.Recent.Count - RecentLimit);
        await store.WriteStateAsync();
        var tags = new TagList { { "job", JobId } };
        FlmTelemetry.StepDuration.Record(elapsed.TotalMilliseconds, tags);
        FlmTelemetry.Loss.Record(loss, tags);
        FlmTelemetry.TokensPerSecond.Record(point.TokensPerSecond, tags);
        FlmTelemetry.Tokens.Add(tokens, tags);
    }

    private async Task Finish(string state, string message)
    {
        StopTimer();
        var previous = S.State;
        S.State = state;
        if (state == JobStates.Failed)
            S.Error = message;
        Log(state, message);
        await store.WriteStateAsync();
        if (previous is JobStates.Starting or JobStates.Running or JobStates.Paused)
        {
            // Free the workers' memory; a worker that is gone has nothing to free.
            await Task.WhenAll(S.RankWorkers.Select(async (_, rank) =>
            {
                try
                {
                    await Worker(rank).Release(JobId, S.Incarnation);
                }
                catch (Exception ex)
                {
                    log.LogWarning("Job {Job}: could not release worker {Worker}: {Message}", JobId, S.RankWorkers[rank], ex.Message);
                }
            }));
        }
        await Scheduler.JobEnded(JobId, state);
        await this.UnregisterReminderIfExists(ReminderName);
    }

    public const string ClusterSchedulerKey = "cluster";

    private void Log(string kind, string message)
    {
        S.Events.Add(new JobEvent(DateTime.UtcNow, kind, message));
        if (S.Events.Count > EventLimit)
            S.Events.RemoveRange(0, S.Events.Count - EventLimit);
        log.LogInformation("Job {Job} {Kind}: {Message}", JobId, kind, message);
    }
}

internal static class ReminderExtensions
{
    public static async Task UnregisterReminderIfExists(this Grain grain, string name)
    {
        var reminder = await grain.GetReminder(name);
        if (reminder is not null)
            await grain.UnregisterReminder(reminder);
    }
}
