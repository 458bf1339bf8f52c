using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Jobs;

namespace FlmCluster.Grains.Jobs;

/// <summary>
/// What a coordinator persists: the accepted job, its phase and how its ranks are being rebuilt, where training
/// stands (committed step, data cursor), its workers, its recovery points and its history. Changed only by
/// <see cref="JobStateMachine"/>.
/// </summary>
[GenerateSerializer, Alias("flm.JobState")]
public sealed class JobState
{
    [Id(0)] public AcceptedJob? Job { get; set; }
    [Id(1)] public JobPhase Phase { get; set; } = JobPhase.Queued;

    /// <summary>While <see cref="JobPhase.Starting"/>: where the ranks' state comes from.</summary>
    [Id(2)] public Rebuild? Rebuild { get; set; }

    /// <summary>Bumped by every (re)build, so that workers and messages of an older one are told apart.</summary>
    [Id(3)] public int Incarnation { get; set; }

    [Id(4)] public JobCursor Cursor { get; set; } = JobCursor.Start;
    [Id(5)] public List<string> RankWorkers { get; set; } = [];

    /// <summary>The job fitted onto fewer GPUs after servers were lost for good (null: the layouts as submitted).</summary>
    [Id(6)] public string? FittedJobJson { get; set; }

    [Id(7)] public List<JobEvent> Events { get; set; } = [];
    [Id(8)] public List<StepPoint> Recent { get; set; } = [];
    [Id(9)] public string? Error { get; set; }

    [Id(10)] public PendingCheckpoint? Pending { get; set; }
    [Id(11)] public PendingCheckpoint? LastCheckpoint { get; set; }
    [Id(12)] public bool SaveRequested { get; set; }

    /// <summary>The newest step whose in-memory replicas every rank's holders have.</summary>
    [Id(13)] public ReplicaPoint? LastReplica { get; set; }

    /// <summary>Restores since the last committed step: a job that cannot make progress stops at the limit.</summary>
    [Id(14)] public int RestoresWithoutProgress { get; set; }

    /// <summary>At a stage's end: the loss of the next batch under the old model, to compare with the grown one's.</summary>
    [Id(15)] public GrowthTransition? Growth { get; set; }

    /// <summary>A shrunk job found GPUs for more replicas: it checkpoints, then moves to this many.</summary>
    [Id(16)] public int? GrowBackDp { get; set; }

    /// <summary>When the current outage began (workers lost and not yet rebuilt).</summary>
    [Id(17)] public DateTimeOffset? OutageSince { get; set; }

    /// <summary>Batches of samples the job skips (never trained); a step that reaches one reads past it.</summary>
    [Id(23)] public List<SkippedWindow> SkippedData { get; set; } = [];

    /// <summary>Rollbacks for an anomaly, by the step it happened at.</summary>
    [Id(24)] public Dictionary<long, int> Anomalies { get; set; } = [];

    /// <summary>Where the job's time went.</summary>
    [Id(22)] public TimeLedger Time { get; set; } = new();

    /// <summary>What kind of loss the current outage began with.</summary>
    [Id(21)] public FailureKind? OutageKind { get; set; }

    /// <summary>What the current outage began with.</summary>
    [Id(20)] public string? OutageReason { get; set; }

    /// <summary>While <see cref="JobPhase.Waiting"/>: when to look again.</summary>
    [Id(18)] public DateTimeOffset? RetryAt { get; set; }

}

/// <summary>Where training stood at an in-memory snapshot, and who holds each rank's copy (its own worker first, then its peer).</summary>
[GenerateSerializer, Immutable, Alias("flm.ReplicaPoint")]
public sealed record ReplicaPoint(
    [property: Id(0)] JobCursor Cursor,
    [property: Id(1)] IReadOnlyList<IReadOnlyList<string>> Holders,
    [property: Id(2)] DateTime StartedAt,
    [property: Id(3)] string ManifestJson = "")
{
    public long Step => Cursor.NextStep;

    /// <summary>A replica point where rank r's copy is kept by its own worker and by <paramref name="peers"/>[r].</summary>
    public static ReplicaPoint Of(JobCursor at, IReadOnlyList<string> workers, IReadOnlyList<string> peers, DateTime startedAt) =>
        // Plain lists: persisted state must read back as the types it was written with.
        new(at, workers.Select((worker, rank) => (IReadOnlyList<string>)new List<string> { worker, peers[rank] }).ToList(), startedAt);
}

/// <summary>A checkpoint being written (or the last one committed): where training stood and its folder.</summary>
[GenerateSerializer, Immutable, Alias("flm.PendingCheckpoint")]
public sealed record PendingCheckpoint(
    [property: Id(0)] JobCursor Cursor,
    [property: Id(1)] string Directory,
    [property: Id(2)] string DataFingerprint,
    [property: Id(3)] DateTime StartedAt)
{
    public long Step => Cursor.NextStep;
}

/// <summary>A growth transition under way: the next batch's loss before it, and when it began.</summary>
[GenerateSerializer, Immutable, Alias("flm.GrowthTransition")]
public sealed record GrowthTransition([property: Id(0)] double LossBefore, [property: Id(1)] DateTime StartedAt);

/// <summary>How <see cref="JobCursor"/> (an engine type, free of Orleans) travels and persists.</summary>
[GenerateSerializer, Immutable, Alias("flm.JobCursor")]
public readonly record struct JobCursorSurrogate(
    [property: Id(0)] long NextStep,
    [property: Id(1)] long SamplesConsumed,
    [property: Id(2)] long AdamStep,
    [property: Id(3)] int Stage,
    [property: Id(4)] long StageStartStep);

[RegisterConverter]
public sealed class JobCursorConverter : IConverter<JobCursor, JobCursorSurrogate>
{
    public JobCursor ConvertFromSurrogate(in JobCursorSurrogate s) => new(s.NextStep, s.SamplesConsumed, s.AdamStep, s.Stage, s.StageStartStep);
    public JobCursorSurrogate ConvertToSurrogate(in JobCursor c) => new(c.NextStep, c.SamplesConsumed, c.AdamStep, c.Stage, c.StageStartStep);
}
