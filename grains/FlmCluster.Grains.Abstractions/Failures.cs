namespace FlmCluster.Grains.Abstractions;

// Typed failures between grains and clients. Recovery decisions read their types (FailureClassifier), never
// their messages, which are for people.

/// <summary>A request the cluster refuses (bad job, unknown job, a layout it can never host): reported to the user as bad input.</summary>
[GenerateSerializer, Alias("flm.ClusterRequestException")]
public sealed class ClusterRequestException : Exception
{
    public ClusterRequestException() { }
    public ClusterRequestException(string message) : base(message) { }
    public ClusterRequestException(string message, Exception inner) : base(message, inner) { }
}

/// <summary>A worker whose server is gone (no active silo for its node) or that lost its state with a restart.</summary>
[GenerateSerializer, Alias("flm.WorkerLostException")]
public sealed class WorkerLostException : Exception
{
    public WorkerLostException() { }
    public WorkerLostException(string worker, string message) : base(message) => Worker = worker;

    [Id(0)] public string Worker { get; init; } = "";
}

/// <summary>A worker asked about a job (or an incarnation of it) it does not hold: it was restarted, reset or reassigned.</summary>
[GenerateSerializer, Alias("flm.WorkerNotHoldingJobException")]
public sealed class WorkerNotHoldingJobException : Exception
{
    public WorkerNotHoldingJobException() { }

    public WorkerNotHoldingJobException(string worker, string jobId, int incarnation)
        : base($"worker {worker} does not hold job {jobId} (incarnation {incarnation})") => (Worker, JobId, Incarnation) = (worker, jobId, incarnation);

    [Id(0)] public string Worker { get; init; } = "";
    [Id(1)] public string JobId { get; init; } = "";
    [Id(2)] public int Incarnation { get; init; }
}

/// <summary>A rank's collective stopped because the job was aborted elsewhere: an echo of another failure, never its root cause.</summary>
[GenerateSerializer, Alias("flm.RankAbortedException")]
public sealed class RankAbortedException : Exception
{
    public RankAbortedException() { }
    public RankAbortedException(string worker, string message) : base(message) => Worker = worker;

    [Id(0)] public string Worker { get; init; } = "";
}

/// <summary>A rank lost a peer: it waited longer than the collective timeout for it, or the peer's server became unreachable. The peer is gone or hung.</summary>
[GenerateSerializer, Alias("flm.PeerTimeoutException")]
public sealed class PeerTimeoutException : Exception
{
    public PeerTimeoutException() { }
    public PeerTimeoutException(string worker, string message) : base(message) => Worker = worker;

    [Id(0)] public string Worker { get; init; } = "";
}

/// <summary>No holder has the in-memory replica a rank needs (the rank and its peer were lost together).</summary>
[GenerateSerializer, Alias("flm.ReplicaUnavailableException")]
public sealed class ReplicaUnavailableException : Exception
{
    public ReplicaUnavailableException() { }
    public ReplicaUnavailableException(int rank, long step, string message) : base(message) => (Rank, Step) = (rank, step);

    [Id(0)] public int Rank { get; init; }
    [Id(1)] public long Step { get; init; }
}

/// <summary>
/// A rank's own computation failed (not a collective, not a lost peer): the same inputs would fail again, so
/// the job fails with this cause. <see cref="CauseType"/> names the original exception for the log only.
/// </summary>
[GenerateSerializer, Alias("flm.RankFailedException")]
public sealed class RankFailedException : Exception
{
    public RankFailedException() { }

    public RankFailedException(string worker, int rank, string causeType, string message)
        : base($"rank {rank} on {worker} failed: {message}") => (Worker, Rank, CauseType) = (worker, rank, causeType);

    [Id(0)] public string Worker { get; init; } = "";
    [Id(1)] public int Rank { get; init; }
    [Id(2)] public string CauseType { get; init; } = "";
}

/// <summary>
/// A rank's device did not come back from its work (a hang) within the grace after its job was aborted: the
/// worker abandoned it, and its GPU is out of service until its server restarts.
/// </summary>
[GenerateSerializer, Alias("flm.RankHungException")]
public sealed class RankHungException : Exception
{
    public RankHungException() { }
    public RankHungException(string worker, string message) : base(message) => Worker = worker;

    [Id(0)] public string Worker { get; init; } = "";
}
