using System.Diagnostics;
using FlmCluster.Grains.Workers;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Parallel;
using FlmCluster.Training.Telemetry;

namespace FlmCluster.Grains.Telemetry;

/// <summary>
/// One rank's figures, at its worker: every metric tagged with the job, stage, server, GPU, rank and its
/// (dp, tp, pp) coordinates; a "rank.step" span per step, child of the coordinator's "job.step".
/// </summary>
public sealed class RankTelemetry(string jobId, string stage, string worker, RankCoords coords, int rank, IRankExecutor executor)
{
    private readonly TagList _tags = new()
    {
        { FlmTelemetry.Tags.Job, jobId },
        { FlmTelemetry.Tags.Stage, stage },
        { FlmTelemetry.Tags.Node, worker[..worker.IndexOf('/')] },
        { FlmTelemetry.Tags.Gpu, worker[(worker.IndexOf('/') + 1)..] },
        { FlmTelemetry.Tags.Rank, rank },
        { FlmTelemetry.Tags.Dp, coords.Dp },
        { FlmTelemetry.Tags.Tp, coords.Tp },
        { FlmTelemetry.Tags.Pp, coords.Pp },
    };

    /// <summary>The rank's span of a step, under the coordinator's span when the step names one.</summary>
    public Activity? StartStep(long step, string? traceParent)
    {
        var activity = FlmTelemetry.Source.StartActivity("rank.step", ActivityKind.Internal, traceParent);
        if (activity is not null)
        {
            foreach (var tag in _tags)
                activity.SetTag(tag.Key, tag.Value);
            activity.SetTag(FlmTelemetry.Tags.Step, step);
        }
        return activity;
    }

    public void Idle(TimeSpan waited) => FlmTelemetry.RankIdle.Record(waited.TotalSeconds, _tags);

    public void Stepped(RankStepReport report, Activity? activity)
    {
        var communication = report.CommTime - report.PipelineWait;
        var compute = report.Elapsed - report.CommTime;
        FlmTelemetry.RankStepDuration.Record(report.Elapsed.TotalSeconds, _tags);
        FlmTelemetry.RankLastStep.Record(report.Elapsed.TotalSeconds, _tags);
        FlmTelemetry.RankCompute.Record(compute.TotalSeconds, _tags);
        FlmTelemetry.RankCommunication.Record(communication.TotalSeconds, _tags);
        FlmTelemetry.RankPipelineIdle.Record(report.PipelineWait.TotalSeconds, _tags);
        FlmTelemetry.RankBytes.Add(report.CommBytes, _tags);
        FlmTelemetry.RankParameterMemory.Record(executor.ParameterBytes, _tags);
        FlmTelemetry.RankOptimizerMemory.Record(executor.OptimizerBytes, _tags);
        activity?.SetTag("flm.compute.duration_ms", compute.TotalMilliseconds);
        activity?.SetTag("flm.communication.duration_ms", communication.TotalMilliseconds);
        activity?.SetTag("flm.pipeline_idle.duration_ms", report.PipelineWait.TotalMilliseconds);
    }
}
