namespace FlmCluster.Grains.Abstractions;

/// <summary>
/// A job as a client submits it: its config (JSON, the same format as job files), its priority, the checkpoint
/// it resumes from, and whether it may replace another run's checkpoints in its checkpoint folder. The cluster
/// validates all of it and derives the rest (name, layout, GPUs, steps); nothing here is trusted.
/// </summary>
[GenerateSerializer, Immutable, Alias("flm.JobSubmission")]
public sealed record JobSubmission(
    [property: Id(0)] string JobJson,
    [property: Id(1)] int Priority = 0,
    [property: Id(2)] string? ResumeFrom = null,
    [property: Id(3)] bool OverwriteCheckpoints = false);

/// <summary>A job the cluster accepted: the submission, with what the cluster derived from it when it validated it.</summary>
/// <param name="RunId">The run its checkpoints belong to: a new one, or the run of the checkpoint it resumes.</param>
/// <param name="Dp">Data-parallel size of its widest stage: the job holds dp × tp × pp GPUs.</param>
/// <param name="Device">The device kind its servers must have (cpu or cuda).</param>
[GenerateSerializer, Immutable, Alias("flm.AcceptedJob")]
public sealed record AcceptedJob(
    [property: Id(0)] string Name,
    [property: Id(1)] JobSubmission Submission,
    [property: Id(2)] string RunId,
    [property: Id(3)] int Dp,
    [property: Id(4)] int Tp,
    [property: Id(5)] int Pp,
    [property: Id(6)] long Steps,
    [property: Id(7)] string Device,
    [property: Id(8)] DateTime SubmittedAt)
{
    public int WorldSize => Dp * Tp * Pp;
}

/// <summary>Which worker holds each rank of a job (index = global rank).</summary>
[GenerateSerializer, Immutable, Alias("flm.JobAllocation")]
public sealed record JobAllocation([property: Id(0)] IReadOnlyList<string> RankWorkers);

/// <summary>Where the state of a job's ranks comes from when they are (re)built.</summary>
public enum RebuildKind
{
    /// <summary>Initialised from the job's seed: a job's first start.</summary>
    Fresh,

    /// <summary>Loaded from a checkpoint on disk, resharded into the job's layout (a resume, a restore, a resize).</summary>
    Checkpoint,

    /// <summary>Each rank from its in-memory replica: its own worker's copy or its peer's (same layout).</summary>
    Replicas,

    /// <summary>Grown into the next stage's shape and layout from the checkpoint that ended the stage before.</summary>
    Growth,
}

/// <summary>How the ranks of a job are (re)built: from nothing, a checkpoint folder, the replicas of a step, or grown from a stage's checkpoint.</summary>
[GenerateSerializer, Immutable, Alias("flm.Rebuild")]
public sealed record Rebuild(
    [property: Id(0)] RebuildKind Kind,
    [property: Id(1)] string? Checkpoint = null,
    [property: Id(2)] ReplicaSource? Replicas = null)
{
    public static Rebuild Fresh { get; } = new(RebuildKind.Fresh);
    public static Rebuild FromCheckpoint(string directory) => new(RebuildKind.Checkpoint, directory);
    public static Rebuild FromReplicas(ReplicaSource replicas) => new(RebuildKind.Replicas, Replicas: replicas);
    public static Rebuild GrowFrom(string stageCheckpoint) => new(RebuildKind.Growth, stageCheckpoint);

    public override string ToString() => Kind switch
    {
        RebuildKind.Checkpoint => $"from {Checkpoint}",
        RebuildKind.Replicas => $"from the in-memory replicas of step {Replicas!.Step}",
        RebuildKind.Growth => $"grown from {Checkpoint}",
        _ => "from the job's seed",
    };
}

/// <summary>
/// What a worker must hold for a job: the job (resolved, as JSON), its rank, the rank table, where training
/// stands and where the rank's state comes from. A job with growth stages holds one stage at a time (its shape
/// and layout). <see cref="SessionKey"/> is the secret the ranks of this build prove to each other when their
/// data plane connects (<see cref="SessionKeys"/>).
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
    [property: Id(7)] int Stage,
    [property: Id(8)] Rebuild Rebuild,
    [property: Id(9)] string SessionKey = "");

/// <summary>Session keys of the data plane: 32 random bytes as 64 lowercase hex digits, one per build of a job's ranks.</summary>
public static class SessionKeys
{
    public static string New() => Convert.ToHexStringLower(System.Security.Cryptography.RandomNumberGenerator.GetBytes(32));

    /// <summary>The key's bytes; null when the text is not a session key.</summary>
    public static byte[]? Parse(string text) =>
        text.Length == 64 && text.All(char.IsAsciiHexDigitLower) ? Convert.FromHexString(text) : null;
}

/// <summary>
/// Where the in-memory replicas of a step are: for every rank of the layout that took them, the workers that
/// hold its shard (the rank's own worker first, then its peer on another server), and the checkpoint manifest
/// of those shards, so that a rank of any layout restores from them as from a checkpoint.
/// </summary>
[GenerateSerializer, Immutable, Alias("flm.ReplicaSource")]
public sealed record ReplicaSource(
    [property: Id(0)] long Step,
    [property: Id(1)] IReadOnlyList<IReadOnlyList<string>> Holders,
    [property: Id(2)] string ManifestJson);

/// <summary>An in-memory snapshot the coordinator asks for: every worker copies its rank now and sends the copy to Peer.</summary>
[GenerateSerializer, Immutable, Alias("flm.ReplicaCommand")]
public sealed record ReplicaCommand(
    [property: Id(0)] string JobId,
    [property: Id(1)] int Incarnation,
    [property: Id(2)] long Step,
    [property: Id(3)] string Peer);

/// <summary>A piece of one rank's replica on its way to, or back from, the worker that keeps it, with the whole replica's checksum.</summary>
[GenerateSerializer, Immutable, Alias("flm.ReplicaChunk")]
public sealed record ReplicaChunk(
    [property: Id(0)] string JobId,
    [property: Id(1)] int Rank,
    [property: Id(2)] long Step,
    [property: Id(3)] int Index,
    [property: Id(4)] int Count,
    [property: Id(5)] byte[] Data,
    [property: Id(6)] string Checksum);

/// <summary>
/// Where a worker's replica stands: still being sent, held by its peer (Done: with the shard's description, as a
/// checkpoint's shard is described, and the rank's data fingerprint), or failed (Error).
/// </summary>
[GenerateSerializer, Immutable, Alias("flm.ReplicaStatus")]
public sealed record ReplicaStatus(
    [property: Id(0)] long Step,
    [property: Id(1)] bool Done,
    [property: Id(2)] long Bytes,
    [property: Id(3)] string? Error,
    [property: Id(4)] string? ShardJson = null,
    [property: Id(5)] string? DataFingerprint = null);

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
/// <param name="TraceParent">The coordinator's step span (W3C traceparent), parent of the rank's span; null when not traced.</param>
[GenerateSerializer, Immutable, Alias("flm.WorkerStep")]
public sealed record WorkerStep(
    [property: Id(0)] string JobId,
    [property: Id(1)] int Incarnation,
    [property: Id(2)] long Step,
    [property: Id(3)] long FirstSample,
    [property: Id(4)] double Lr,
    [property: Id(5)] double MaskValue,
    [property: Id(6)] string? TraceParent = null);

/// <summary>A worker's account of one step.</summary>
/// <param name="CommMs">Time in collectives and sends (pipeline receives not included).</param>
/// <param name="PipelineIdleMs">Time waiting in pipeline receives for the neighbouring stage.</param>
/// <param name="PeakFlops">Peak FLOP/s of the worker's device (0: unknown), for MFU.</param>
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
    [property: Id(9)] long CommBytes,
    [property: Id(10)] double PipelineIdleMs = 0,
    [property: Id(11)] double PeakFlops = 0);

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

/// <summary>What a GPU's worker is doing.</summary>
public enum WorkerState
{
    Idle,
    Loading,
    Ready,
    Training,
    Probing,
    Failed,

    /// <summary>Not a worker's own state: a client could not reach it.</summary>
    Unreachable,
}

/// <summary>What a GPU is doing, and on which silo its worker lives.</summary>
[GenerateSerializer, Immutable, Alias("flm.WorkerStatus")]
public sealed record WorkerStatus(
    [property: Id(0)] string Worker,
    [property: Id(1)] WorkerState State,
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
    [property: Id(9)] string Stage = "main",
    [property: Id(10)] long FirstSample = 0);

/// <summary>A batch of global samples the job skipped: they are never trained (a non-finite result or a loss spike).</summary>
/// <param name="Step">The step that first read it.</param>
[GenerateSerializer, Immutable, Alias("flm.SkippedWindow")]
public sealed record SkippedWindow(
    [property: Id(0)] long Step,
    [property: Id(1)] long FirstSample,
    [property: Id(2)] int Samples,
    [property: Id(3)] string Reason);

/// <summary>One rank's share of a committed step: wall time on its worker, split into compute, communication and pipeline idle.</summary>
[GenerateSerializer, Immutable, Alias("flm.RankTime")]
public sealed record RankTime(
    [property: Id(0)] int Rank,
    [property: Id(1)] string Worker,
    [property: Id(2)] double StepMs,
    [property: Id(3)] double ComputeMs,
    [property: Id(4)] double CommunicationMs,
    [property: Id(5)] double PipelineIdleMs);

/// <summary>
/// A committed step as the job's history keeps it: the step's metrics, its model FLOPs and MFU (null when a
/// device's peak is unknown), and every rank's time.
/// </summary>
[GenerateSerializer, Immutable, Alias("flm.StepRecord")]
public sealed record StepRecord(
    [property: Id(0)] StepPoint Point,
    [property: Id(1)] double ModelFlops,
    [property: Id(2)] double? Mfu,
    [property: Id(3)] string Layout,
    [property: Id(4)] IReadOnlyList<RankTime> Ranks,
    [property: Id(5)] DateTime At);

/// <summary>
/// A page of a job's history: committed steps from a step on (the latest record of each step, ascending) and
/// events from an index on (0 = the job's first). <see cref="NextStep"/> and <see cref="NextEvent"/> continue it.
/// </summary>
[GenerateSerializer, Immutable, Alias("flm.JobHistory")]
public sealed record JobHistory(
    [property: Id(0)] IReadOnlyList<StepRecord> Steps,
    [property: Id(1)] IReadOnlyList<JobEvent> Events,
    [property: Id(2)] long NextStep,
    [property: Id(3)] int NextEvent)
{
    /// <summary>Most records of either kind one read returns.</summary>
    public const int MaxPage = 10_000;
}

/// <summary>Loss of one batch without training, summed over the tokens a rank reports.</summary>
[GenerateSerializer, Immutable, Alias("flm.LossSum")]
public sealed record LossSum([property: Id(0)] double Sum, [property: Id(1)] long Tokens);

/// <summary>Where a job is in its life (docs/architecture.md has the state diagram).</summary>
public enum JobPhase
{
    /// <summary>Accepted, waiting for GPUs.</summary>
    Queued,

    /// <summary>Its ranks are being (re)built: first start, resume, restore, resize or growth into the next stage.</summary>
    Starting,

    /// <summary>Steps are running.</summary>
    Running,

    /// <summary>Between steps, by request; it holds its GPUs.</summary>
    Paused,

    /// <summary>Lost workers and nothing to rebuild them on yet: it waits for servers to return or GPUs to free up.</summary>
    Waiting,

    Completed,
    Cancelled,
    Failed,
}

public static class JobPhases
{
    public static bool IsFinal(this JobPhase phase) => phase is JobPhase.Completed or JobPhase.Cancelled or JobPhase.Failed;

    /// <summary>The job holds GPUs in this phase.</summary>
    public static bool HoldsGpus(this JobPhase phase) => phase is JobPhase.Starting or JobPhase.Running or JobPhase.Paused or JobPhase.Waiting;
}

/// <summary>A job as the client sees it.</summary>
[GenerateSerializer, Immutable, Alias("flm.JobStatus")]
public sealed record JobStatus(
    [property: Id(0)] string JobId,
    [property: Id(1)] string Name,
    [property: Id(2)] JobPhase State,
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
    [property: Id(15)] long? LastReplicaStep = null,
    [property: Id(16)] TimeAccount? Time = null,
    [property: Id(17)] IReadOnlyList<SkippedWindow>? SkippedData = null,
    [property: Id(18)] string? Coordinator = null);

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


/// <summary>One collective of a data-plane probe (like nccl-tests): kind, size, element type, root.</summary>
/// <param name="Kind">all-reduce, all-reduce-max, reduce-scatter, all-gather, broadcast, send-recv (a ring), ping-pong (rank 0 ↔ rank 1) or barrier.</param>
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
    [property: Id(5)] bool ReturnOutputs,
    [property: Id(6)] string SessionKey = "");

/// <summary>Per op: the output bytes of the last repeat (when asked) and the time of all repeats.</summary>
[GenerateSerializer, Immutable, Alias("flm.ProbeResult")]
public sealed record ProbeResult(
    [property: Id(0)] int Rank,
    [property: Id(1)] IReadOnlyList<byte[]> Outputs,
    [property: Id(2)] IReadOnlyList<double> Milliseconds,
    [property: Id(3)] string Silo);

/// <summary>What the scheduler can offer a job that lost workers, or that runs on fewer GPUs than it asked for.</summary>
/// <param name="AllocationAlive">Every server the job's workers are on is active (restarted ones included): a rebuild in place can work.</param>
/// <param name="FittingDp">Of the data-parallel sizes asked about, those the job's live GPUs plus free ones could hold now, largest first.</param>
[GenerateSerializer, Immutable, Alias("flm.ClusterView")]
public sealed record ClusterView(
    [property: Id(0)] bool AllocationAlive,
    [property: Id(1)] IReadOnlyList<int> FittingDp);

/// <summary>
/// Where a job's time went, in seconds: every second since it was submitted is in exactly one of these (docs/operations.md).
/// The effective training time ratio (ETTR) is the productive share.
/// </summary>
/// <param name="Queued">Waiting for GPUs before its first start.</param>
/// <param name="Startup">Building its ranks for the first time (from the seed, or the checkpoint it resumes).</param>
/// <param name="Productive">Steps that count: committed and never rolled back.</param>
/// <param name="Redone">Steps that were committed, then rolled back by a restore and trained again.</param>
/// <param name="CheckpointStall">Steps waiting for snapshots to host memory, and for checkpoints at stage ends, grow-backs and the job's end.</param>
/// <param name="Growth">Growth transitions: the loss before, the stage's checkpoint, growing every rank, the loss after.</param>
/// <param name="Paused">Paused by request.</param>
/// <param name="Overhead">The coordinator's own work between steps (polls, commits, scheduling).</param>
[GenerateSerializer, Immutable, Alias("flm.TimeAccount")]
public sealed record TimeAccount(
    [property: Id(0)] double Queued,
    [property: Id(1)] double Startup,
    [property: Id(2)] double Productive,
    [property: Id(3)] double Redone,
    [property: Id(4)] double CheckpointStall,
    [property: Id(5)] double Growth,
    [property: Id(6)] double Paused,
    [property: Id(7)] double Overhead,
    [property: Id(8)] RecoveryTime Recovery)
{
    /// <summary>The sum of the components: the job's wall time as accounted.</summary>
    public double Accounted => Queued + Startup + Productive + Redone + CheckpointStall + Growth + Paused + Overhead + Recovery.Total;

    /// <summary>Effective training time ratio: the productive share of the time since the job started (queueing left out).</summary>
    public double Ettr => Accounted - Queued > 0 ? Productive / (Accounted - Queued) : 0;
}

/// <summary>Recovery time by phase, in seconds, summed over a job's recoveries.</summary>
/// <param name="Detect">From the failed operation's start (or a coordinator's last mark before it moved) until the failure surfaced.</param>
/// <param name="Decide">Asking the cluster what it offers, probing workers, deciding.</param>
/// <param name="Allocate">Getting replacement or fewer GPUs from the scheduler.</param>
/// <param name="Rebuild">Workers building their model slices again.</param>
/// <param name="Restore">Workers loading their state from the recovery point (replicas or a checkpoint).</param>
/// <param name="FirstStep">The first step after a rebuild (warm-up included), until it commits.</param>
/// <param name="Waiting">Waiting for servers to return or GPUs to free up.</param>
[GenerateSerializer, Immutable, Alias("flm.RecoveryTime")]
public sealed record RecoveryTime(
    [property: Id(0)] double Detect,
    [property: Id(1)] double Decide,
    [property: Id(2)] double Allocate,
    [property: Id(3)] double Rebuild,
    [property: Id(4)] double Restore,
    [property: Id(5)] double FirstStep,
    [property: Id(6)] double Waiting,
    [property: Id(7)] int Count)
{
    public double Total => Detect + Decide + Allocate + Rebuild + Restore + FirstStep + Waiting;
}

/// <summary>How long a worker took to build its rank: the model slice, and loading its state (0 when initialised from the seed).</summary>
[GenerateSerializer, Immutable, Alias("flm.RankBuildReport")]
public sealed record RankBuildReport([property: Id(0)] double BuildMs, [property: Id(1)] double RestoreMs);
