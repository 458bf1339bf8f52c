using System.Diagnostics;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.History;
using FlmCluster.Grains.Placement;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Jobs;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans.Runtime;

namespace FlmCluster.Grains.Jobs;

/// <summary>
/// One job. Keeps its interface, its timer and its persistence, and carries out what its parts decide: the
/// state machine (<see cref="JobStateMachine"/>), steps (<see cref="StepDriver"/>), rank builds
/// (<see cref="RankBuilder"/>), recovery points (<see cref="RecoveryPoints"/>), growth transitions
/// (<see cref="StageTransitions"/>) and recovery (<see cref="Recovery"/>, deciding by <see cref="RecoveryPolicy"/>).
/// A grain timer drives the job one step per tick, so that status, pause and cancel are served between steps;
/// a reminder wakes it after a restart, and on activation it continues from its committed state.
/// </summary>
[ControlPlanePlacement]
public sealed class JobCoordinatorGrain : Grain, IJobCoordinatorGrain, IRemindable, IJobTicks
{
    public const string ClusterSchedulerKey = "cluster";

    /// <summary>How long one tick may go on running steps.</summary>
    private static readonly TimeSpan TickBudget = TimeSpan.FromMilliseconds(20);
    private const string ReminderName = "keep-running";

    private readonly IPersistentState<JobState> _store;
    private readonly IJobHistoryStore _history;
    private readonly IHostApplicationLifetime _lifetime;
    private readonly ILogger<JobCoordinatorGrain> _log;
    private readonly JobStateMachine _job;
    private readonly RankCalls _ranks;
    private readonly StepDriver _steps;
    private readonly RankBuilder _builder;
    private readonly RecoveryPoints _points;
    private readonly StageTransitions _stages;
    private readonly TimeSpan _serverWait;
    private Recovery? _recovery;
    private IGrainTimer? _timer;

    private readonly JobEnd _end;

    /// <summary>In memory only: while the job's state cannot be saved, ticks back off until then.</summary>
    private DateTimeOffset _retryAt;

    public JobCoordinatorGrain(
        [PersistentState("job", FlmSiloBuilderExtensions.StorageName)] IPersistentState<JobState> store,
        IJobHistoryStore history, IGrainFactory grains, IHostApplicationLifetime lifetime, FlmNodeOptions node,
        [Microsoft.Extensions.DependencyInjection.FromKeyedServices(FlmSiloBuilderExtensions.JobClock)] TimeProvider time, ILogger<JobCoordinatorGrain> log)
    {
        _store = store;
        _history = history;
        _lifetime = lifetime;
        _log = log;
        _serverWait = node.WorkerWait;
        _job = new JobStateMachine(store, history, time, log, this.GetPrimaryKeyString());
        _ranks = new RankCalls(_job, grains, log);
        _steps = new StepDriver(_job, _ranks, time);
        _points = new RecoveryPoints(_job, _ranks);
        _builder = new RankBuilder(_job, _ranks, _steps, time);
        _stages = new StageTransitions(_job, _points, _steps);
        Scheduler = grains.GetGrain<IClusterSchedulerGrain>(ClusterSchedulerKey);
        _end = new JobEnd(_job, _ranks, Scheduler, log, this);
    }

    private IClusterSchedulerGrain Scheduler { get; }
    private JobState S => _job.State;
    private Recovery Recovery => _recovery ??= new Recovery(_job, _points, _ranks, Scheduler, RecoverySettings.For(_job.Submitted.Job.Recovery, _serverWait));

    public override async Task OnActivateAsync(CancellationToken cancellationToken)
    {
        if (S.Phase is JobPhase.Starting or JobPhase.Running or JobPhase.Waiting)
        {
            // Taking over from an activation on a silo that died: this write makes a late write of that one fail.
            // The time since that activation's last mark went to finding out it was gone.
            S.Time.BeginRecovery();
            _job.Spend(S.Time.Use, TimeUse.Detect);
            _job.Log("resumed", $"{Failure.CoordinatorRestarted(RuntimeIdentity).Message}; continuing from committed step {S.Cursor.NextStep}");
            await _job.Save();
            EnsureTimer();
        }
    }

    public async Task Initialize(AcceptedJob job)
    {
        if (_store.RecordExists)
            return;
        await _job.Accept(job, $"{job.Name}: layout dp={job.Dp},tp={job.Tp},pp={job.Pp}, {job.Steps} steps, priority {job.Submission.Priority}, run {job.RunId}");
    }

    public async Task Start(JobAllocation allocation)
    {
        if (S.Phase != JobPhase.Queued)
            return;
        Rebuild rebuild;
        JobCursor from;
        try
        {
            (rebuild, from) = _points.StartingPoint();
        }
        catch (Exception ex) when (FailureClassifier.Classify(ex).Kind == FailureKind.UserError)
        {
            await _end.Finish(JobPhase.Failed, ex.Message);
            return;
        }
        await _job.BecomeStarting(rebuild, from, "allocated", () => $"ranks 0-{allocation.RankWorkers.Count - 1} on {string.Join(", ", allocation.RankWorkers)}, {rebuild}", allocation);
        await this.RegisterOrUpdateReminder(ReminderName, TimeSpan.FromMinutes(1), TimeSpan.FromMinutes(1));
        EnsureTimer();
    }

    public Task<JobStatus> GetStatus()
    {
        if (!_job.Exists)
            throw new ClusterRequestException($"no job '{_job.JobId}'");
        var accepted = S.Job!;
        var layout = _job.StageLayout;
        var checkpointDir = _job.HasCheckpointDir ? _job.Job.Job.Checkpoint.Dir : null;
        return Task.FromResult(new JobStatus(_job.JobId, accepted.Name, S.Phase, S.Cursor.NextStep, accepted.Steps, $"dp={layout.Dp},tp={layout.Tp},pp={layout.Pp}",
            _job.Ranks.ToList(), S.Recent.ToList(), S.Events.TakeLast(50).ToList(), S.Error, accepted.Submission.Priority, accepted.SubmittedAt, _job.StageName,
            checkpointDir, S.LastCheckpoint?.Step, S.LastReplica?.Step, S.Time.Account(), S.SkippedData.ToList(), RuntimeIdentity));
    }

    public Task Wake() => Task.CompletedTask; // activating this grain is what resumes its job

    public Task<JobHistory> GetHistory(long sinceStep, int sinceEvent, int max)
    {
        if (!_job.Exists)
            throw new ClusterRequestException($"no job '{_job.JobId}'");
        if (sinceStep < 0 || sinceEvent < 0)
            throw new ClusterRequestException($"history of job {_job.JobId}: since step {sinceStep} and since event {sinceEvent} must not be negative");
        if (max is < 1 or > JobHistory.MaxPage)
            throw new ClusterRequestException($"history of job {_job.JobId}: a page holds 1 … {JobHistory.MaxPage} records (asked for {max})");
        return _history.Read(_job.JobId, sinceStep, sinceEvent, max);
    }

    public async Task Cancel(string reason)
    {
        if (_job.Exists && !S.Phase.IsFinal())
            await _end.Finish(JobPhase.Cancelled, reason);
    }

    public async Task Pause()
    {
        if (S.Phase != JobPhase.Running)
            throw new ClusterRequestException($"job {_job.JobId} is {Text(S.Phase)}; only a running job can be paused");
        await _job.BecomePaused();
    }

    public async Task Resume()
    {
        if (S.Phase != JobPhase.Paused)
            throw new ClusterRequestException($"job {_job.JobId} is {Text(S.Phase)}; only a paused job can be resumed");
        await _job.BecomeResumed();
        EnsureTimer();
    }

    public async Task SaveCheckpoint()
    {
        if (!_job.Exists)
            throw new ClusterRequestException($"no job '{_job.JobId}'");
        if (!_job.HasCheckpointDir)
            throw new ClusterRequestException($"job {_job.JobId} has no checkpoint.dir; submit it with --set checkpoint.dir=DIR");
        if (S.Phase is not (JobPhase.Running or JobPhase.Starting or JobPhase.Paused or JobPhase.Waiting))
            throw new ClusterRequestException($"job {_job.JobId} is {Text(S.Phase)}");
        S.SaveRequested = true;
        await _job.Save();
    }

    public Task ReceiveReminder(string reminderName, TickStatus status)
    {
        if (S.Phase is JobPhase.Starting or JobPhase.Running or JobPhase.Waiting)
            EnsureTimer();
        else if (S.Phase.IsFinal() || !_job.Exists)
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

    Task IJobTicks.StopTicking()
    {
        StopTimer();
        return this.UnregisterReminderIfExists(ReminderName);
    }

    void IJobTicks.TickAgainAt(DateTimeOffset at)
    {
        _retryAt = at;
        EnsureTimer();
    }

    private async Task Tick(CancellationToken cancellationToken)
    {
        if (_job.Now < _retryAt || (S.Phase == JobPhase.Waiting && _job.Now < S.RetryAt))
            return;
        if (_end.Pending)
        {
            await _end.Report();
            return;
        }
        try
        {
            switch (S.Phase)
            {
                case JobPhase.Starting:
                    await _builder.Build();
                    break;
                case JobPhase.Running:
                    // Steps of milliseconds (simulated devices) run several to a tick: a timer tick costs more than
                    // they do. Pause and cancel wait at most the budget; status is served in between regardless.
                    var budget = Stopwatch.GetTimestamp();
                    do
                        await RunningTick();
                    while (S.Phase == JobPhase.Running && !_end.Pending && Stopwatch.GetElapsedTime(budget) < TickBudget);
                    break;
                case JobPhase.Waiting:
                    await Carry(await Recovery.Retry());
                    break;
                default:
                    StopTimer();
                    break;
            }
        }
        catch (Exception ex) when (_lifetime.ApplicationStopping.IsCancellationRequested || cancellationToken.IsCancellationRequested)
        {
            // This silo is going away, and its calls fail for that reason alone: the job is not at fault. It
            // continues on another silo from its committed state (a reminder, or the next call, activates it).
            _log.LogInformation("Job {Job}: coordinator stopping with its silo at step {Step} ({Message})", _job.JobId, S.Cursor.NextStep, ex.Message);
            StopTimer();
        }
        catch (Exception ex)
        {
            var failure = FailureClassifier.Classify(ex);
            if (failure.Kind == FailureKind.StateConflict)
                await _job.Reload(); // the last write of an activation on a silo just declared dead: take its state
            else if (failure.Kind is FailureKind.Fatal or FailureKind.StorageUnavailable)
                _log.LogError(ex, "Job {Job} at step {Step}: {Kind}", _job.JobId, S.Cursor.NextStep, failure.Kind);
            var decision = await Recovery.Handle(failure);
            if (failure.Kind == FailureKind.StorageUnavailable && decision is RecoveryDecision.Wait wait)
            {
                _retryAt = wait.RetryAt;
                return;
            }
            await Carry(decision);
            return;
        }
        Recovery.StorageBack();
    }

    /// <summary>A step, a checkpoint in progress, a growth transition or grow-back, or the end of training.</summary>
    private async Task RunningTick()
    {
        await _points.Poll();
        var progress = _job.Progress;
        if (progress.Finished(S.Cursor))
        {
            // The job ends with a checkpoint of its final state when it has a checkpoint folder.
            _job.Spend(TimeUse.CheckpointStall);
            if (!_job.HasCheckpointDir || await _points.CheckpointedNow())
                await _end.Finish(JobPhase.Completed, $"all {S.Cursor.NextStep} steps done; last loss {S.Recent.LastOrDefault()?.Loss:0.0000}");
            return;
        }
        if (progress.AtStageEnd(S.Cursor))
        {
            await _stages.EndStage();
            return;
        }
        if (await Recovery.GrowingBack())
            return;
        await _steps.RunStep();
        await _points.BeginDue();
    }

    /// <summary>What is left of a recovery decision for the grain: ending a job the policy gave up on (saying what to resume from).</summary>
    private Task Carry(RecoveryDecision decision) =>
        decision is RecoveryDecision.Fail fail
            ? _end.Finish(JobPhase.Failed, fail.Reason + (S.LastCheckpoint is { } last ? $"; resume it from {last.Directory} (flm submit --resume-from)" : ""))
            : Task.CompletedTask;

    private static string Text(JobPhase phase) => phase.ToString().ToLowerInvariant();
}
