using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Telemetry;
using FlmCluster.Training.Engine;

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
        using var activity = StepTelemetry.Start(job.JobId, job.StageName, plan.Step);
        var command = new WorkerStep(job.JobId, job.State.Incarnation, plan.Step, plan.FirstSample, plan.Lr, plan.MaskValue, activity?.Id);
        var started = time.GetTimestamp();
        var reports = await ranks.FanOut((worker, _) => worker.RunStep(command));
        var elapsed = time.GetElapsedTime(started);
        var (step, next) = job.Progress.Complete(at, plan, reports.Select(ToEngine).ToList(), elapsed);
        var point = new StepPoint(step.Step, step.Loss, step.TokensPerSecond, elapsed.TotalMilliseconds, step.GradNorm, step.CommFraction,
            step.Lr, step.Tokens, step.Skipped, job.StageName);
        var layout = job.StageLayout;
        var record = StepTelemetry.Record(point, job.StageJob.Model, $"dp={layout.Dp},tp={layout.Tp},pp={layout.Pp}", job.Ranks, reports, elapsed, job.Now.UtcDateTime);
        await job.CommitStep(next, record);
        StepTelemetry.Committed(job.JobId, record, activity);
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
