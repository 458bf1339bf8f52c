using System.Diagnostics;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Telemetry;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Jobs;
using FlmCluster.Training.Telemetry;

namespace FlmCluster.Grains.Jobs;

/// <summary>
/// Runs a job's steps: plans the next one (<see cref="Training.Jobs.JobProgress"/>: step, data cursor, learning
/// rate, mask), fans it out to every rank, aggregates the reports and commits the step durably — it counts once
/// the state says so; workers answer a repeated step with the report they already sent.
/// </summary>
public sealed class StepDriver(JobStateMachine job, RankCalls ranks, TimeProvider time)
{
    private readonly StragglerWatch _stragglers = new();
    public async Task RunStep()
    {
        var at = ReadPastSkippedData(job.Cursor);
        var plan = job.Progress.Plan(at);
        using var activity = StepTelemetry.Start(job.JobId, job.StageName, plan.Step);
        var command = new WorkerStep(job.JobId, job.State.Incarnation, plan.Step, plan.FirstSample, plan.Lr, plan.MaskValue, activity?.Id);
        // The first step after a recovery is the recovery's last phase; the others are training time.
        job.Spend(job.State.Time.Current is null ? TimeUse.Step : TimeUse.FirstStep);
        var started = time.GetTimestamp();
        var fanOut = Stopwatch.GetTimestamp();
        var reports = await ranks.RunStep(command, Deadline());
        var elapsed = time.GetElapsedTime(started);
        var commit = Stopwatch.GetTimestamp();
        var fanOutSeconds = Stopwatch.GetElapsedTime(fanOut, commit).TotalSeconds;
        var (step, next) = job.Progress.Complete(at, plan, reports.Select(ToEngine).ToList(), elapsed);
        var recent = job.State.Recent.Where(p => p.Stage == job.StageName).Select(p => p.Loss).ToList();
        if (LossWatch.Check(step, recent, job.Job.Job.Recovery) is { } anomaly)
        {
            // Not committed: the job rolls back and reads past these batches from then on.
            var windows = Windows(plan, anomaly);
            job.State.SkippedData.AddRange(windows.Where(w => !job.State.SkippedData.Any(s => s.FirstSample == w.FirstSample)));
            job.State.Anomalies[plan.Step] = job.State.Anomalies.GetValueOrDefault(plan.Step) + 1;
            job.Log("anomaly", $"{anomaly.Reason}; skipping samples {string.Join(", ", windows.Select(w => $"{w.FirstSample}–{w.FirstSample + w.Samples - 1}"))}");
            job.Spend(TimeUse.Overhead, TimeUse.Redone);
            throw new StepAnomalyException(anomaly.Reason, windows);
        }
        var point = new StepPoint(step.Step, step.Loss, step.TokensPerSecond, elapsed.TotalMilliseconds, step.GradNorm, step.CommFraction,
            step.Lr, step.Tokens, step.Skipped, job.StageName, plan.FirstSample);
        job.Spend(TimeUse.Overhead);
        var recovered = job.State.Time.EndRecovery();
        var layout = job.StageLayout;
        var record = StepTelemetry.Record(point, job.StageJob.Model, $"dp={layout.Dp},tp={layout.Tp},pp={layout.Pp}", job.Ranks, reports, elapsed, job.Now.UtcDateTime);
        await job.CommitStep(next, record);
        StepTelemetry.Committed(job.JobId, record, job.State.Time.Account(), activity);
        if (recovered is not null)
            Report(recovered);
        WatchStragglers(reports);
        var control = new TagList { { FlmTelemetry.Tags.Job, job.JobId }, { FlmTelemetry.Tags.Part, "fan_out" } };
        FlmTelemetry.StepControl.Record(fanOutSeconds, control);
        control[1] = new(FlmTelemetry.Tags.Part, "commit");
        FlmTelemetry.StepControl.Record(Stopwatch.GetElapsedTime(commit).TotalSeconds, control);
    }

    /// <summary>How long the step may take before it counts as hung: hang_factor × the recent median step time, at least hang_min_seconds.</summary>
    private TimeSpan? Deadline()
    {
        var recent = job.State.Recent.TakeLast(20).Select(p => p.StepMs).Order().ToList();
        if (recent.Count == 0)
            return null; // the first step warms up: the collective timeout bounds it
        var config = job.Job.Job.Recovery;
        return TimeSpan.FromSeconds(Math.Max(config.HangMinSeconds, config.HangFactor * recent[recent.Count / 2] / 1000));
    }

    /// <summary>Reports stragglers once (event and metric) and, when the job says so, has them replaced.</summary>
    private void WatchStragglers(IReadOnlyList<WorkerStepReport> reports)
    {
        var config = job.Job.Job.Recovery;
        var found = _stragglers.Observe(job.State.Incarnation, reports, config);
        if (found.Count == 0)
            return;
        var workers = job.Ranks;
        var message = string.Join("; ", found.Select(s => $"rank {s.Rank} on {workers[s.Rank]} computes {s.Median:0} ms per step, " +
            $"{s.Median / s.Typical:0.0}× the other ranks' median {s.Typical:0} ms over the last {config.StragglerWindow} steps"));
        job.Log("straggler", message);
        foreach (var s in found)
            FlmTelemetry.Stragglers.Add(1, new TagList { { FlmTelemetry.Tags.Job, job.JobId }, { FlmTelemetry.Tags.Rank, s.Rank }, { FlmTelemetry.Tags.Worker, workers[s.Rank] } });
        if (config.ReplaceStragglers)
            throw new StragglerException($"straggler: {message}", [.. found.Select(s => workers[s.Rank])]);
    }

    /// <summary>The data cursor moved past the batches the job skips (after a rollback, a replay reaches them again).</summary>
    private JobCursor ReadPastSkippedData(JobCursor at)
    {
        while (job.State.SkippedData.FirstOrDefault(w => w.FirstSample == at.SamplesConsumed) is { } skipped)
        {
            job.Log("skipped-data", $"step {at.NextStep} reads past samples {skipped.FirstSample}–{skipped.FirstSample + skipped.Samples - 1} ({skipped.Reason})");
            at = at with { SamplesConsumed = at.SamplesConsumed + skipped.Samples };
        }
        return at;
    }

    /// <summary>The batches an anomaly skips: this step's, and those of the committed steps just before it.</summary>
    private IReadOnlyList<SkippedWindow> Windows(StepPlan plan, StepAnomaly anomaly)
    {
        var batch = job.StageJob.Train.GlobalBatch;
        var before = job.State.Recent.Where(p => p.Stage == job.StageName && p.Step < plan.Step).TakeLast(anomaly.SkipBatches - 1);
        return [.. before.Select(p => new SkippedWindow(p.Step, p.FirstSample, batch, anomaly.Reason)), new SkippedWindow(plan.Step, plan.FirstSample, batch, anomaly.Reason)];
    }

    /// <summary>A recovery ended with this committed step: its phases, as an event and as metrics.</summary>
    private void Report(RecoveryTime phases)
    {
        job.Log("recovered", $"at step {job.Cursor.NextStep - 1} in {phases.Total:0.0} s: detect {phases.Detect:0.0} s, decide {phases.Decide:0.0} s, " +
            $"allocate {phases.Allocate:0.0} s, rebuild {phases.Rebuild:0.0} s, restore {phases.Restore:0.0} s, first step {phases.FirstStep:0.0} s, waiting {phases.Waiting:0.0} s");
        var tags = new TagList { { FlmTelemetry.Tags.Job, job.JobId } };
        FlmTelemetry.Recoveries.Add(1, tags);
        foreach (var (phase, seconds) in new[] { ("detect", phases.Detect), ("decide", phases.Decide), ("allocate", phases.Allocate), ("rebuild", phases.Rebuild),
                     ("restore", phases.Restore), ("first_step", phases.FirstStep), ("waiting", phases.Waiting) })
            FlmTelemetry.RecoveryPhase.Record(seconds, new TagList { { FlmTelemetry.Tags.Job, job.JobId }, { FlmTelemetry.Tags.Phase, phase } });
    }

    /// <summary>Mean token loss of the next global batch under the workers' current model, without training.</summary>
    public async Task<double> EvaluateNextBatch()
    {
        var mask = job.Progress.MaskAt(job.Cursor);
        var sums = await ranks.FanOut((worker, _) => worker.Evaluate(job.JobId, job.State.Incarnation, job.Cursor.SamplesConsumed, mask));
        return sums.Sum(x => x.Sum) / Math.Max(1, sums.Sum(x => x.Tokens));
    }

    private static RankStepReport ToEngine(WorkerStepReport r) =>
        new(r.Step, r.Rank, r.ReportsLoss, r.LossSum, r.Tokens, r.GradNorm, r.Skipped,
            TimeSpan.FromMilliseconds(r.ElapsedMs), TimeSpan.FromMilliseconds(r.CommMs + r.PipelineIdleMs), r.CommBytes, TimeSpan.FromMilliseconds(r.PipelineIdleMs));
}
