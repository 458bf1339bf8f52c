using System.Diagnostics;
using System.Diagnostics.Metrics;
using FlmCluster.Training.Telemetry;

namespace FlmCluster.Grains.Telemetry;

/// <summary>
/// Recovery points and rebuilds in figures, at the coordinator: checkpoint and replica bytes, durations and
/// stalls (tag job), and spans for checkpoints ("job.checkpoint"), replicas ("job.replica"), rank (re)builds —
/// restores among them — ("job.rebuild") and growth transitions ("job.growth"), each recorded when it ends with
/// the time it began.
/// </summary>
public static class RecoveryTelemetry
{
    private static TagList Tags(string jobId) => new() { { FlmTelemetry.Tags.Job, jobId } };

    /// <summary>Steps stood still while every rank snapshotted for a checkpoint.</summary>
    public static void CheckpointStall(string jobId, TimeSpan stall) => FlmTelemetry.CheckpointStall.Record(stall.TotalSeconds, Tags(jobId));

    public static void CheckpointCommitted(string jobId, long step, long bytes, DateTime startedAt, DateTime committedAt) =>
        PointMade("job.checkpoint", FlmTelemetry.CheckpointBytes, FlmTelemetry.CheckpointDuration, jobId, step, bytes, startedAt, committedAt);

    public static void ReplicaStall(string jobId, TimeSpan stall) => FlmTelemetry.ReplicaStall.Record(stall.TotalSeconds, Tags(jobId));

    public static void ReplicaHeld(string jobId, long step, long bytes, DateTime startedAt, DateTime heldAt) =>
        PointMade("job.replica", FlmTelemetry.ReplicaBytes, FlmTelemetry.ReplicaDuration, jobId, step, bytes, startedAt, heldAt);

    /// <summary>A recovery point of a step is made: its bytes, how long it took, and its span.</summary>
    private static void PointMade(string name, Counter<long> size, Histogram<double> duration,
        string jobId, long step, long bytes, DateTime startedAt, DateTime madeAt)
    {
        size.Add(bytes, Tags(jobId));
        duration.Record((madeAt - startedAt).TotalSeconds, Tags(jobId));
        using var span = Span(name, jobId, startedAt);
        span?.SetTag(FlmTelemetry.Tags.Step, step);
        span?.SetTag("flm.bytes", bytes);
    }

    /// <summary>Every rank was (re)built: a first start, a restore, a resize or a growth.</summary>
    public static void Rebuilt(string jobId, string rebuild, int ranks, DateTimeOffset startedAt)
    {
        using var span = Span("job.rebuild", jobId, startedAt);
        span?.SetTag(FlmTelemetry.Tags.Rebuild, rebuild);
        span?.SetTag("flm.ranks", ranks);
    }

    public static void Grown(string jobId, string from, string to, long step, DateTimeOffset startedAt)
    {
        using var span = Span("job.growth", jobId, startedAt);
        span?.SetTag("flm.stage.from", from);
        span?.SetTag("flm.stage.to", to);
        span?.SetTag(FlmTelemetry.Tags.Step, step);
    }

    private static Activity? Span(string name, string jobId, DateTimeOffset startedAt)
    {
        var span = FlmTelemetry.StartedAt(name, startedAt);
        span?.SetTag(FlmTelemetry.Tags.Job, jobId);
        return span;
    }
}
