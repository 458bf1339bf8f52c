using System.Diagnostics;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.History;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Jobs;
using FlmCluster.Training.Parallel;
using FlmCluster.Training.Telemetry;
using Microsoft.Extensions.Logging;

namespace FlmCluster.Grains.Jobs;

/// <summary>
/// A job's durable state and its phases. Each phase change is one method here, and these methods are the only
/// places that change the phase, bump the incarnation (every (re)build of the ranks) and persist a transition:
/// <code>
///   Queued ──Start──▶ Starting ──BecomeRunning──▶ Running ⇄ Paused
///                        ▲  │                     │
///                        │  └──BecomeWaiting──▶ Waiting (lost workers, nothing to rebuild on yet)
///                        └──────BecomeStarting──── (restore, replace, shrink, grow back, growth)
///   any ──BecomeFinished──▶ Completed | Cancelled | Failed
/// </code>
/// It also gives the parts of the coordinator their view of the job: the job as it runs now (fitted onto fewer
/// GPUs or as submitted), its progress rules, the workers of the current stage's ranks.
/// Every committed step and every event also goes to the job's durable history (<see cref="IJobHistoryStore"/>),
/// appended before the state is persisted; the state keeps only the latest ones (the windows that recovery reads).
/// </summary>
public sealed class JobStateMachine(IPersistentState<JobState> store, IJobHistoryStore history, TimeProvider time, ILogger log, string jobId)
{
    private const int RecentLimit = 200;
    private const int EventLimit = 200;

    private readonly List<StepRecord> _unsavedSteps = [];
    private readonly List<JobEvent> _unsavedEvents = [];

    private ResolvedJob? _submitted;
    private ResolvedJob? _job;
    private JobProgress? _progress;

    public JobState State => store.State;
    public string JobId { get; } = jobId;
    public DateTimeOffset Now => time.GetUtcNow();
    public JobPhase Phase => State.Phase;
    public JobCursor Cursor => State.Cursor;
    public bool Exists => State.Job is not null;

    /// <summary>The job as accepted.</summary>
    public ResolvedJob Submitted => _submitted ??= ResolvedJob.Parse(State.Job!.Submission.JobJson, $"job {JobId}");

    /// <summary>The job as it runs now: fitted onto fewer GPUs after servers were lost, or as accepted.</summary>
    public ResolvedJob Job => _job ??= State.FittedJobJson is { } fitted ? ResolvedJob.Parse(fitted, $"job {JobId}") : Submitted;

    public JobProgress Progress => _progress ??= new JobProgress(Job);

    /// <summary>
    /// The GPUs the job holds now, as data-parallel replicas of the submitted widest layout: the unit the
    /// scheduler's shrink and grow-back choices come in. The fitted job's own widest stage may have another
    /// tp × pp (its stages fit a smaller allocation differently), so its dp is not comparable with them.
    /// </summary>
    public int DataParallelSize => Job.WidestLayout.WorldSize / (Submitted.WidestLayout.Tp * Submitted.WidestLayout.Pp);

    /// <summary>The stage being trained: its shape, layout, batch.</summary>
    public JobConfig StageJob => Progress.StageJob(State.Cursor);

    public ParallelLayout StageLayout => ParallelLayout.FromConfig(StageJob.Layout);

    public string StageName => Job.Stages.Count > 1 ? Job.Stages[State.Cursor.Stage].Name : "main";

    /// <summary>The workers of the stage's ranks: the job holds enough for its widest stage; a narrower one uses the first.</summary>
    public IReadOnlyList<string> Ranks => State.RankWorkers.Take(StageLayout.WorldSize).ToList();

    public RunIdentity Run => new(State.Job!.RunId, State.Job.Name, Submitted.Fingerprint);

    public bool HasCheckpointDir => !string.IsNullOrWhiteSpace(Job.Job.Checkpoint.Dir);

    /// <summary>Queued: the job as the scheduler accepted it.</summary>
    public Task Accept(AcceptedJob job, string message)
    {
        State.Job = job;
        State.Phase = JobPhase.Queued;
        State.Time.Start(new DateTimeOffset(job.SubmittedAt, TimeSpan.Zero), TimeUse.Queued);
        Log("submitted", message);
        return Save();
    }

    /// <summary>
    /// Starting: the ranks are (re)built by a new incarnation, <paramref name="rebuild"/> says from what, training
    /// continues at <paramref name="from"/>; with <paramref name="moveTo"/>, on other GPUs in the layouts that fit them.
    /// With <paramref name="rollBack"/>, steps after <paramref name="from"/> were trained and will be trained again.
    /// </summary>
    public Task BecomeStarting(Rebuild rebuild, JobCursor from, string kind, Func<string> message, JobAllocation? moveTo = null, bool rollBack = false)
    {
        State.Time.Spend(Now, State.Phase == JobPhase.Queued ? TimeUse.Startup : rebuild.Kind == RebuildKind.Growth ? TimeUse.Growth : TimeUse.Rebuild);
        if (rollBack)
            State.Time.RollBack(from.NextStep);
        if (moveTo is not null)
        {
            var fitted = Submitted.FitInto(moveTo.RankWorkers.Count)
                ?? throw new InvalidOperationException($"job {JobId} does not fit {moveTo.RankWorkers.Count} GPUs");
            var whole = fitted.WidestLayout.WorldSize == Submitted.WidestLayout.WorldSize;
            State.FittedJobJson = whole ? null : fitted.ToJson();
            State.RankWorkers = [.. moveTo.RankWorkers];
            _job = null;
            _progress = null;
        }
        State.Rebuild = rebuild;
        State.Cursor = from;
        State.Recent.RemoveAll(p => p.Step >= from.NextStep);
        // What the old incarnation was doing is void: its pending checkpoint is never committed, its replicas in
        // another layout are of no use.
        State.Pending = null;
        if (moveTo is not null || rebuild.Kind == RebuildKind.Growth)
            State.LastReplica = null;
        State.Incarnation++;
        State.Phase = JobPhase.Starting;
        State.RetryAt = null;
        Log(kind, message());
        return Save();
    }

    /// <summary>Running: every rank holds its state; steps go on.</summary>
    public Task BecomeRunning(string message)
    {
        State.Time.Spend(Now, TimeUse.Overhead);
        State.Phase = JobPhase.Running;
        State.Rebuild = null;
        State.OutageSince = null;
        State.OutageReason = null;
        State.OutageKind = null;
        Log("started", message);
        return Save();
    }

    /// <summary>Waiting: workers are lost and nothing can rebuild them yet; looks again at <paramref name="retryAt"/>.</summary>
    public Task BecomeWaiting(DateTimeOffset retryAt, string message)
    {
        var first = State.Phase != JobPhase.Waiting;
        State.Time.Spend(Now, TimeUse.Waiting);
        State.Phase = JobPhase.Waiting;
        State.RetryAt = retryAt;
        State.OutageSince ??= Now;
        if (first)
            Log("waiting", message);
        return Save();
    }

    public Task BecomePaused()
    {
        State.Time.Spend(Now, TimeUse.Paused);
        State.Phase = JobPhase.Paused;
        Log("paused", $"paused before step {State.Cursor.NextStep}");
        return Save();
    }

    public Task BecomeResumed()
    {
        State.Time.Spend(Now, TimeUse.Overhead);
        State.Phase = JobPhase.Running;
        Log("resumed", $"resumed at step {State.Cursor.NextStep}");
        return Save();
    }

    /// <summary>Completed, cancelled or failed, for good.</summary>
    public Task BecomeFinished(JobPhase final, string message)
    {
        if (!final.IsFinal())
            throw new ArgumentException($"{final} is not a final phase", nameof(final));
        State.Time.Spend(Now, TimeUse.Ended);
        State.Phase = final;
        if (final == JobPhase.Failed)
            State.Error = message;
        State.Rebuild = null;
        State.RetryAt = null;
        Log(final.ToString().ToLowerInvariant(), message);
        return Save();
    }

    /// <summary>A step is committed: it counts once this is durable.</summary>
    public Task CommitStep(JobCursor next, StepRecord record)
    {
        State.Cursor = next;
        State.RestoresWithoutProgress = 0;
        _unsavedSteps.Add(record);
        State.Recent.Add(record.Point);
        if (State.Recent.Count > RecentLimit)
            State.Recent.RemoveRange(0, State.Recent.Count - RecentLimit);
        return Save();
    }

    /// <summary>
    /// Charges the time since the last mark to what the job was doing (or to <paramref name="charge"/>) and
    /// starts <paramref name="next"/>; returns the seconds charged.
    /// </summary>
    public double Spend(TimeUse next, TimeUse? charge = null) => State.Time.Spend(Now, next, charge);

    /// <summary>
    /// Persists a change within the current phase (checkpoint and replica bookkeeping), the job's history first. A
    /// storage that cannot be reached is a <see cref="StateStorageException"/>; a conflicting write stays
    /// <see cref="Orleans.Storage.InconsistentStateException"/>.
    /// </summary>
    public async Task Save()
    {
        try
        {
            if (_unsavedSteps.Count > 0 || _unsavedEvents.Count > 0)
            {
                await history.Append(JobId, _unsavedSteps, _unsavedEvents);
                _unsavedSteps.Clear();
                _unsavedEvents.Clear();
            }
            await store.WriteStateAsync();
        }
        catch (Exception ex) when (ex is not Orleans.Storage.InconsistentStateException && FindInconsistent(ex) is null)
        {
            throw new StateStorageException(ex);
        }
    }

    private static Orleans.Storage.InconsistentStateException? FindInconsistent(Exception ex) =>
        ex as Orleans.Storage.InconsistentStateException ?? (ex.InnerException is { } inner ? FindInconsistent(inner) : null);

    /// <summary>The state as storage holds it now (another activation of this job wrote it last).</summary>
    public async Task Reload()
    {
        await store.ReadStateAsync();
        _submitted = null;
        _job = null;
        _progress = null;
    }

    public void Log(string kind, string message)
    {
        var e = new JobEvent(Now.UtcDateTime, kind, message);
        State.Events.Add(e);
        _unsavedEvents.Add(e);
        FlmTelemetry.Events.Add(1, new TagList { { FlmTelemetry.Tags.Job, JobId }, { FlmTelemetry.Tags.Event, kind } });
        if (State.Events.Count > EventLimit)
            State.Events.RemoveRange(0, State.Events.Count - EventLimit);
        log.LogInformation("Job {Job} {Kind}: {Message}", JobId, kind, message);
    }
}
