using System.Diagnostics;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Telemetry;

namespace FlmCluster.Grains.Jobs;

/// <summary>
/// Runs a job's steps: plans the next one (<see cref="Training.Jobs.JobProgress"/>: step, data cursor, learning
/// rate, mask), fans it out to every rank, aggregates the reports and commits the step durably — it counts once
/// the state says so; workers answer a repeated step with the report they already sent.
/// </summary>
public sealed class StepDriver(JobStateMachine job, RankCalls ranks, TimeProvider time)
{
    public async Task RunStep()
    {
        var at = job.Cursor;
        var plan = job.Progress.Plan(at);
        using var activity = FlmTelemetry.Source.StartActivity("job.step");
        activity?.SetTag("job", job.JobId);
        activity?.SetTag("step", plan.Step);
        var command = new WorkerStep(job.JobId, job.State.Incarnation, plan.Step, plan.FirstSample, plan.Lr, plan.MaskValue);
        // The first step after a recovery is the recovery's last phase; the others are training time.
        job.Spend(job.State.Time.Current is null ? TimeUse.Step : TimeUse.FirstStep);
        var started = time.GetTimestamp();
        var reports = await ranks.FanOut((worker, _) => worker.RunStep(command));
        var elapsed = time.GetElapsedTime(started);
        var (step, next) = job.Progress.Complete(at, plan, reports.Select(ToEngine).ToList(), elapsed);
        var point = new StepPoint(step.Step, step.Loss, step.TokensPerSecond, elapsed.TotalMilliseconds, step.GradNorm, step.CommFraction,
            step.Lr, step.Tokens, step.Skipped, job.StageName);
        job.Spend(TimeUse.Overhead);
        var recovered = job.State.Time.EndRecovery();
        await job.CommitStep(next, point);
        if (recovered is not null)
            Report(recovered);
        var tags = new TagList { { "job", job.JobId } };
        FlmTelemetry.StepDuration.Record(elapsed.TotalMilliseconds, tags);
        FlmTelemetry.Loss.Record(step.Loss, tags);
        FlmTelemetry.TokensPerSecond.Record(step.TokensPerSecond, tags);
        FlmTelemetry.Tokens.Add(step.Tokens, tags);
    }

    /// <summary>A recovery ended with this committed step: its phases, as an event and as metrics.</summary>
    private void Report(RecoveryTime phases)
    {
        job.Log("recovered", $"at step {job.Cursor.NextStep - 1} in {phases.Total:0.0} s: detect {phases.Detect:0.0} s, decide {phases.Decide:0.0} s, " +
            $"allocate {phases.Allocate:0.0} s, rebuild {phases.Rebuild:0.0} s, restore {phases.Restore:0.0} s, first step {phases.FirstStep:0.0} s, waiting {phases.Waiting:0.0} s");
        var tags = new TagList { { "job", job.JobId } };
        FlmTelemetry.Recoveries.Add(1, tags);
        foreach (var (phase, seconds) in new[] { ("detect", phases.Detect), ("decide", phases.Decide), ("allocate", phases.Allocate), ("rebuild", phases.Rebuild),
                     ("restore", phases.Restore), ("first_step", phases.FirstStep), ("waiting", phases.Waiting) })
            FlmTelemetry.RecoveryPhase.Record(seconds, new TagList { { "job", job.JobId }, { "phase", phase } });
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
            TimeSpan.FromMilliseconds(r.ElapsedMs), TimeSpan.FromMilliseconds(r.CommMs), r.CommBytes);
}
