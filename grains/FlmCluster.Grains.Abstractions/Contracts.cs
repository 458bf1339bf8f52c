namespace FlmCluster.Grains.Abstractions;

/// <summary>A job as submitted: its validated config (JSON, the same format as job files) and scheduling facts.</summary>
[GenerateSerializer, Immutable, Alias("flm.JobSubmission")]
public sealed record JobSubmission(
    [property: Id(0)] string Name,
    [property: Id(1)] string JobJson,
    [property: Id(2)] int Priority,
    [property: Id(3)] int Dp,
    [property: Id(4)] int Tp,
    [property: Id(5)] int Pp,
    [property: Id(6)] long Steps,
    [property: Id(7)] string? ResumeFrom = null)
{
    public int WorldSize => Dp * Tp * Pp;
}

/// <summary>Which worker holds each rank of a job (index = global rank).</summary>
[GenerateSerializer, Immutable, Alias("flm.JobAllocation")]
public sealed record JobAllocation([property: Id(0)] IReadOnlyList<string> RankWorkers);

/// <summary>
/// What a worker must hold for a job: the job, its rank, the rank table and where training stands. A job with
/// growth stages holds one stage at a time (its shape and layout); GrowFrom is the checkpoint of the previous
/// stage to grow from.
/// </summary>
[GenerateSerializer, Immutable, Alias("flm.WorkerAssignment")]
public sealed record WorkerAssignment(
    [property: Id(0)] string JobId,
    [property: Id(1)] int Incarnation,
    [property: Id(2)] string JobJson,
    [property: Id(3)] int Rank,
    [property: Id(4)] IReadOnlyList<string> RankWorkers,
    [property: Id(5)] long NextStep,
    [property: Id(6)] long SamplesConsumed,
    [property: Id(7)] string? RestoreFrom = null,
    [property: Id(8)] ReplicaSource? RestoreFromReplica = null,
    [property: Id(9)] int Stage = 0,
    [property: Id(10)] string? GrowFrom = null);

/// <summary>
/// Where the in-memory replicas of a step are: for every rank, the workers that hold its replica (the rank's
/// own worker first, then its peer on another server).
/// </summary>
[GenerateSerializer, Immutable, Alias("flm.ReplicaSource")]
public sealed record ReplicaSource(
    [property: Id(0)] long Step,
    [property: Id(1)] IReadOnlyList<IReadOnlyList<string>> Holders);

/// <summary>An in-memory snapshot the coordinator asks for: every worker copies its rank now and sends the copy to Peer.</summary>
[GenerateSerializer, Immutable, Alias("flm.ReplicaCommand")]
public sealed record ReplicaCommand(
    [property: Id(0)] string JobId,
    [property: Id(1)] int Incarnation,
    [property: Id(2)] long Step,
    [property: Id(3)] string Peer);

/// <summary>A piece of one rank's replica on its way to, or back from, the worker that keeps it.</summary>
[GenerateSerializer, Immutable, Alias("flm.ReplicaChunk")]
public sealed record ReplicaChunk(
    [property: Id(0)] string JobId,
    [property: Id(1)] int Rank,
    [property: Id(2)] long Step,
    [property: Id(3)] int Index,
    [property: Id(4)] int Count,
    [property: Id(5)] byte[] Data);

/// <summary>Where a worker's replica stands: still being sent, held by its peer (Done), or failed (Error).</summary>
[GenerateSerializer, Immutable, Alias("flm.ReplicaStatus")]
public sealed record ReplicaStatus(
    [property: Id(0)] long Step,
    [property: Id(1)] bool Done,
    [property: Id(2)] long Bytes,
    [property: Id(3)] string? Error);

/// <summary>A checkpoint the coordinator asks for: every worker snapshots now and writes its shard into Directory.</summary>
[GenerateSerializer, Immutable, Alias("flm.SaveCommand")]
public sealed record SaveCommand(
    [property: Id(0)] string JobId,
    [property: Id(1)] int Incarnation,
    [property: Id(2)] long Step,
    [property: Id(3)] string Directory);

/// <summary>
/// Where a worker's shard stands: still being written (Done false), written (the shard record and its tensor
/// pieces, as the manifest's JSON), or failed (Error).
/// </summary>
[GenerateSerializer, Immutable, Alias("flm.ShardStatus")]
public sealed record ShardStatus(
    [property: Id(0)] long Step,
    [property: Id(1)] bool Done,
    [property: Id(2)] string? ShardJson,
    [property: Id(3)] string? Error);

/// <summary>One training step as the coordinator plans it (idempotent by step number).</summary>
[GenerateSerializer, Immutable, Alias("flm.WorkerStep")]
public sealed record WorkerStep(
    [property: Id(0)] string JobId,
    [property: Id(1)] int Incarnation,
    [property: Id(2)] long Step,
    [property: Id(3)] long FirstSample,
    [property: Id(4)] double Lr,
    [property: Id(5)] double MaskValue);

/// <summary>A worker's account of one step.</summary>
[GenerateSerializer, Immutable, Alias("flm.WorkerStepReport")]
public sealed record WorkerStepReport(
    [property: Id(0)] long Step,
    [property: Id(1)] int Rank,
    [property: Id(2)] bool ReportsLoss,
    [property: Id(3)] double LossSum,
    [property: Id(4)] long Tokens,
    [property: Id(5)] double GradNorm,
    [property: Id(6)] bool Skipped,
    [property: Id(7)] double ElapsedMs,
    [property: Id(8)] double CommMs,
    [property: Id(9)] long CommBytes);

/// <summary>
/// A piece of a tensor message between workers on different silos: raw bytes (never float[]), well under the
/// message size limit. Identified by job, incarnation, sender and message key.
/// </summary>
[GenerateSerializer, Immutable, Alias("flm.TensorChunk")]
public sealed record TensorChunk(
    [property: Id(0)] string JobId,
    [property: Id(1)] int Incarnation,
    [property: Id(2)] int Source,
    [property: Id(3)] string Key,
    [property: Id(4)] int Index,
    [property: Id(5)] int Count,
    [property: Id(6)] int TotalBytes,
    [property: Id(7)] byte[] Data)
{
    /// <summary>Largest chunk carried in one grain call (the Orleans message limit is 100 MiB).</summary>
    public const int MaxBytes = 4 << 20;
}

/// <summary>What a GPU is doing, and on which silo its worker lives.</summary>
[GenerateSerializer, Immutable, Alias("flm.WorkerStatus")]
public sealed record WorkerStatus(
    [property: Id(0)] string Worker,
    [property: Id(1)] string State,
    [property: Id(2)] string? JobId,
    [property: Id(3)] int Rank,
    [property: Id(4)] long Step,
    [property: Id(5)] string? Detail,
    [property: Id(6)] string Silo);

/// <summary>One line of a job's event log.</summary>
[GenerateSerializer, Immutable, Alias("flm.JobEvent")]
public sealed record JobEvent([property: Id(0)] DateTime At, [property: Id(1)] string Kind, [property: Id(2)] string Message);

/// <summary>Metrics of one committed step.</summary>
[GenerateSerializer, Immutable, Alias("flm.StepPoint")]
public sealed record StepPoint(
    [property: Id(0)] long Step,
    [property: Id(1)] double Loss,
    [property: Id(2)] double TokensPerSecond,
    [property: Id(3)] double StepMs,
    [property: Id(4)] double GradNorm,
    [property: Id(5)] double CommFraction,
    [property: Id(6)] double Lr,
    [property: Id(7)] long Tokens,
    [property: Id(8)] bool Skipped,
    [property: Id(9)] string Stage = "main");

/// <summary>Loss of one batch without training, summed over the tokens a rank reports.</summary>
[GenerateSerializer, Immutable, Alias("flm.LossSum")]
public sealed record LossSum([property: Id(0)] double Sum, [property: Id(1)] long Tokens);

public static class JobStates
{
    public const string Queued = "queued";
    public const string Starting = "starting";
    public const string Running = "running";
    public const string Paused = "paused";
    public const string Completed = "completed";
    public const string Cancelled = "cancelled";
    public const string Failed = "failed";

    public static bool IsFinal(string state) => state is Completed or Cancelled or Failed;
}

/// <summary>A job as the client sees it.</summary>
[GenerateSerializer, Immutable, Alias("flm.JobStatus")]
public sealed record JobStatus(
    [property: Id(0)] string JobId,
    [property: Id(1)] string Name,
    [property: Id(2)] string State,
    [property: Id(3)] long Step,
    [property: Id(4)] long TotalSteps,
    [property: Id(5)] string Layout,
    [property: Id(6)] IReadOnlyList<string> Workers,
    [property: Id(7)] IReadOnlyList<StepPoint> Recent,
    [property: Id(8)] IReadOnlyList<JobEvent> Events,
    [property: Id(9)] string? Error,
    [property: Id(10)] int Priority,
    [property: Id(11)] DateTime SubmittedAt,
    [property: Id(12)] string Stage,
    [property: Id(13)] string? CheckpointDir = null,
    [property: Id(14)] long? LastCheckpointStep = null,
    [property: Id(15)] long? LastReplicaStep = null);

/// <summary>A GPU of the cluster and the job holding it.</summary>
[GenerateSerializer, Immutable, Alias("flm.GpuInfo")]
public sealed record GpuInfo([property: Id(0)] string Worker, [property: Id(1)] string Device, [property: Id(2)] string? JobId, [property: Id(3)] int Rank);

/// <summary>A server (silo) and its GPUs.</summary>
[GenerateSerializer, Immutable, Alias("flm.NodeInfo")]
public sealed record NodeInfo([property: Id(0)] string Node, [property: Id(1)] string Address, [property: Id(2)] string Status, [property: Id(3)] IReadOnlyList<GpuInfo> Gpus);

/// <summary>The scheduler's view of the cluster: nodes, GPUs, the queue.</summary>
[GenerateSerializer, Immutable, Alias("flm.ClusterInventory")]
public sealed record ClusterInventory([property: Id(0)] IReadOnlyList<NodeInfo> Nodes, [property: Id(1)] IReadOnlyList<string> Queue)
{
    public int TotalGpus => Nodes.Where(n => n.Status == "active").Sum(n => n.Gpus.Count);
    public int FreeGpus => Nodes.Where(n => n.Status == "active").Sum(n => n.Gpus.Count(g => g.JobId is null));
}

/// <summary>A request the cluster refuses (unknown job, a layout it can never host): reported to the user as bad input.</summary>
[GenerateSerializer, Alias("flm.ClusterRequestException")]
public sealed class ClusterRequestException : Exception
{
    public ClusterRequestException() { }
    public ClusterRequestException(string message) : base(message) { }
    public ClusterRequestException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>One collective of a data-plane probe (like nccl-tests): kind, size, element type, root.</summary>
/// <param name="Kind">all-reduce, all-reduce-max, reduce-scatter, all-gather, broadcast, send-recv (a ring) or barrier.</param>
/// <param name="Elements">Elements per rank (all-gather: of the input; reduce-scatter: of the output).</param>
/// <param name="DType">f32, f64, bf16 or i64.</param>
[GenerateSerializer, Immutable, Alias("flm.ProbeOp")]
public sealed record ProbeOp(
    [property: Id(0)] string Kind,
    [property: Id(1)] long Elements,
    [property: Id(2)] string DType = "f32",
    [property: Id(3)] int Root = 0,
    [property: Id(4)] int Repeat = 1);

/// <summary>A data-plane probe over a set of idle workers: every rank runs the same collectives on deterministic inputs.</summary>
[GenerateSerializer, Immutable, Alias("flm.ProbeRequest")]
public sealed record ProbeRequest(
    [property: Id(0)] string ProbeId,
    [property: Id(1)] int Rank,
    [property: Id(2)] IReadOnlyList<string> RankWorkers,
    [property: Id(3)] IReadOnlyList<ProbeOp> Ops,
    [property: Id(4)] ulong Seed,
    [property: Id(5)] bool ReturnOutputs);

/// <summary>Per op: the output bytes of the last repeat (when asked) and the time of all repeats.</summary>
[GenerateSerializer, Immutable, Alias("flm.ProbeResult")]
public sealed record ProbeResult(
    [property: Id(0)] int Rank,
    [property: Id(1)] IReadOnlyList<byte[]> Outputs,
    [property: Id(2)] IReadOnlyList<double> Milliseconds,
    [property: Id(3)] string Silo);
