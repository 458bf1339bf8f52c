using System.Diagnostics;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Config;
using FlmCluster.Training.Telemetry;

namespace FlmCluster.Grains.Telemetry;

/// <summary>
/// A committed step in figures, at the coordinator: its history record (metrics, model FLOPs, MFU, every rank's
/// time), its metrics (tags job and stage) and its span ("job.step", parent of every rank's "rank.step").
/// </summary>
public static class StepTelemetry
{
    /// <summary>The step's span; its id travels to the workers in <see cref="WorkerStep.TraceParent"/>.</summary>
    public static Activity? Start(string jobId, string stage, long step)
    {
        var activity = FlmTelemetry.Source.StartActivity("job.step");
        activity?.SetTag(FlmTelemetry.Tags.Job, jobId);
        activity?.SetTag(FlmTelemetry.Tags.Stage, stage);
        activity?.SetTag(FlmTelemetry.Tags.Step, step);
        return activity;
    }

    /// <summary>The history record of a step from its point and the ranks' reports (index = rank).</summary>
    public static StepRecord Record(StepPoint point, ModelConfig model, string layout, IReadOnlyList<string> workers,
        IReadOnlyList<WorkerStepReport> reports, TimeSpan elapsed, DateTime at)
    {
        var flops = ModelFlops.PerStep(model, point.Tokens);
        var mfu = ModelFlops.Utilization(flops, elapsed, reports.Select(r => r.PeakFlops).ToList());
        var ranks = reports.OrderBy(r => r.Rank).Select(r => new RankTime(r.Rank, r.Rank < workers.Count ? workers[r.Rank] : "",
            r.ElapsedMs, Math.Max(0, r.ElapsedMs - r.CommMs - r.PipelineIdleMs), r.CommMs, r.PipelineIdleMs)).ToList();
        return new StepRecord(point, flops, mfu, layout, ranks, at);
    }

    /// <summary>Records a step's metrics once it is committed, and where the job's time went so far.</summary>
    public static void Committed(string jobId, StepRecord record, TimeAccount time, Activity? activity)
    {
        var p = record.Point;
        var tags = new TagList { { FlmTelemetry.Tags.Job, jobId }, { FlmTelemetry.Tags.Stage, p.Stage } };
        FlmTelemetry.Ettr.Record(time.Ettr, new TagList { { FlmTelemetry.Tags.Job, jobId } });
        foreach (var (use, seconds) in new[]
                 {
                     ("queued", time.Queued), ("startup", time.Startup), ("productive", time.Productive), ("redone", time.Redone),
                     ("checkpoint_stall", time.CheckpointStall), ("growth", time.Growth), ("paused", time.Paused), ("overhead", time.Overhead),
                     ("recovery", time.Recovery.Total),
                 })
            FlmTelemetry.TimeUsed.Record(seconds, new TagList { { FlmTelemetry.Tags.Job, jobId }, { FlmTelemetry.Tags.Use, use } });
        FlmTelemetry.StepDuration.Record(p.StepMs / 1000, tags);
        FlmTelemetry.Steps.Add(1, tags);
        FlmTelemetry.Tokens.Add(p.Tokens, tags);
        FlmTelemetry.Throughput.Record(p.TokensPerSecond, tags);
        FlmTelemetry.Loss.Record(p.Loss, tags);
        FlmTelemetry.GradNorm.Record(p.GradNorm, tags);
        FlmTelemetry.LearningRate.Record(p.Lr, tags);
        FlmTelemetry.ModelFlops.Record(record.ModelFlops, tags);
        if (record.Mfu is { } mfu)
            FlmTelemetry.Mfu.Record(mfu, tags);
        activity?.SetTag("flm.loss", p.Loss);
        activity?.SetTag("flm.tokens", p.Tokens);
        activity?.SetTag("flm.ranks", record.Ranks.Count);
    }
}
