using System.Diagnostics;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Placement;
using FlmCluster.Training.Config;
using FlmCluster.Training.Optim;
using FlmCluster.Training.Telemetry;
using Microsoft.Extensions.Logging;
using Orleans.Runtime;

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
}

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
    ILogger<JobCoordinatorGrain> log) : Grain, IJobCoordinatorGrain, IRemindable
{
    private const int RecentLimit = 200;
    private const int EventLimit = 200;
    private const string ReminderName = "keep-running";

    private JobConfig? _job;
    private LrSchedule? _schedule;
    private IGrainTimer? _timer;

    private JobState S => store.State;
    private string JobId => this.GetPrimaryKeyString();
    private JobConfig Job => _job ??= JobValidator.Validate(JobConfigLoader.FromJson(S.Submission!.JobJson, $"job {JobId}"));
    private LrSchedule Schedule => _schedule ??= new LrSchedule(Job.Optimizer, Job.Train.Steps);

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
        await store.WriteStateAsync();
        await this.RegisterOrUpdateReminder(ReminderName, TimeSpan.FromMinutes(1), TimeSpan.FromMinutes(1));
        EnsureTimer();
    }

    public Task<JobStatus> GetStatus()
    {
        var sub = S.Submission ?? throw new ClusterRequestException($"no job '{JobId}'");
        return Task.FromResult(new JobStatus(JobId, sub.Name, S.State, S.NextStep, sub.Steps, $"dp={sub.Dp},tp={sub.Tp},pp={sub.Pp}",
            S.RankWorkers.ToList(), S.Recent.ToList(), S.Events.TakeLast(50).ToList(), S.Error, sub.Priority, S.SubmittedAt, "main"));
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
        try
        {
            switch (S.State)
            {
                case JobStates.Starting:
                    await AssignWorkers();
                    break;
                case JobStates.Running:
                    await RunOneStep();
                    break;
                default:
                    StopTimer();
                    break;
            }
        }
        catch (Exception ex)
        {
            log.LogError(ex, "Job {Job} failed at step {Step}", JobId, S.NextStep);
            await Finish(JobStates.Failed, ex is AggregateException agg ? agg.InnerExceptions[0].Message : ex.Message);
        }
    }

    private IGpuWorkerGrain Worker(int rank) => grains.GetGrain<IGpuWorkerGrain>(S.RankWorkers[rank]);

    private async Task AssignWorkers()
    {
        var watch = Stopwatch.StartNew();
        var json = JobConfigLoader.ToJson(Job);
        await Task.WhenAll(S.RankWorkers.Select((_, rank) =>
            Worker(rank).Assign(new WorkerAssignment(JobId, S.Incarnation, json, rank, S.RankWorkers, S.NextStep, S.SamplesConsumed))));
        S.State = JobStates.Running;
        Log("started", $"{S.RankWorkers.Count} workers built their model slices in {watch.Elapsed.TotalSeconds:0.0} s");
        await store.WriteStateAsync();
    }

    private async Task RunOneStep()
    {
        using var activity = FlmTelemetry.Source.StartActivity("job.step");
        activity?.SetTag("job", JobId);
        activity?.SetTag("step", S.NextStep);
        var step = new WorkerStep(JobId, S.Incarnation, S.NextStep, S.SamplesConsumed, Schedule.At(S.NextStep), 1.0);
        var watch = Stopwatch.StartNew();
        var reports = await Task.WhenAll(S.RankWorkers.Select((_, rank) => Worker(rank).RunStep(step)));
        var elapsed = watch.Elapsed;
        var lossRanks = reports.Where(r => r.ReportsLoss).ToList();
        var tokens = lossRanks.Sum(r => r.Tokens);
        var loss = lossRanks.Sum(r => r.LossSum) / Math.Max(1, tokens);
        var comm = reports.Average(r => r.CommMs / Math.Max(1e-9, r.ElapsedMs));
        var point = new StepPoint(step.Step, loss, tokens / elapsed.TotalSeconds, elapsed.TotalMilliseconds, reports[0].GradNorm, comm,
            step.Lr, tokens, reports[0].Skipped);
        // Commit: the step counts once the durable state says so.
        S.NextStep = step.Step + 1;
        S.SamplesConsumed += Job.Train.GlobalBatch;
        S.Recent.Add(point);
        if (S.Recent.Count > RecentLimit)
            S.Recent.RemoveRange(0, S.Recent.Count - RecentLimit);
        await store.WriteStateAsync();
        var tags = new TagList { { "job", JobId } };
        FlmTelemetry.StepDuration.Record(elapsed.TotalMilliseconds, tags);
        FlmTelemetry.Loss.Record(loss, tags);
        FlmTelemetry.TokensPerSecond.Record(point.TokensPerSecond, tags);
        FlmTelemetry.Tokens.Add(tokens, tags);
        if (S.NextStep >= S.Submission!.Steps)
            await Finish(JobStates.Completed, $"all {S.NextStep} steps done; last loss {loss:0.0000}");
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
        await grains.GetGrain<IClusterSchedulerGrain>(ClusterSchedulerKey).JobEnded(JobId, state);
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
