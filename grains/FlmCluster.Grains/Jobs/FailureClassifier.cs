using FlmCluster.Grains.Abstractions;
using FlmCluster.Training;
using FlmCluster.Training.Checkpoint;
using Orleans.Runtime;
using Orleans.Runtime.Messaging;
using Orleans.Storage;

namespace FlmCluster.Grains.Jobs;

/// <summary>What kind of failure a job met, as far as recovery is concerned.</summary>
public enum FailureKind
{
    /// <summary>
    /// Workers are out of reach: their server died or stopped, a call was cut off or timed out, a collective
    /// waited on a gone or hung peer. Until membership declares the server dead it may also be a blip.
    /// </summary>
    WorkerLost,

    /// <summary>A worker answered but no longer holds the job: its server restarted (or it was reset). Its ranks must be rebuilt.</summary>
    WorkerReset,

    /// <summary>A rank's in-memory replica is gone with its holders: the replicas cannot rebuild the job.</summary>
    ReplicaUnavailable,

    /// <summary>The job or its inputs are wrong (config, data, a checkpoint): retrying cannot help; the user must fix it.</summary>
    UserError,

    /// <summary>The job's persisted state changed under this activation: reload it and go on.</summary>
    StateConflict,

    /// <summary>This coordinator was activated on another silo in the middle of the job.</summary>
    CoordinatorRestarted,

    /// <summary>A step's result must not be kept (non-finite, or a loss spike): roll back and skip its data.</summary>
    Anomaly,

    /// <summary>A rank's device hung, or a rank straggles: its GPU goes out of service and the rank is rebuilt elsewhere.</summary>
    Hang,

    /// <summary>The job's state could not be saved (the grain storage, e.g. Redis, is unreachable): nothing can be committed until it is back.</summary>
    StorageUnavailable,

    /// <summary>A rank's own computation failed, or something unforeseen: the job fails with it.</summary>
    Fatal,
}

/// <summary>A classified failure: its kind, for people its message, and for an anomaly the step to roll back to (at most).</summary>
/// <param name="Workers">For a hang or a straggler: the workers whose GPUs go out of service.</param>
public sealed record Failure(FailureKind Kind, string Message, long? RewindTo = null, long? AtStep = null, IReadOnlyList<string>? Workers = null)
{
    public static Failure CoordinatorRestarted(string silo) => new(FailureKind.CoordinatorRestarted, $"coordinator activated on {silo}");
}

/// <summary>
/// The one place that turns exceptions into failure kinds, by their types: recovery never reads a message.
/// </summary>
public static class FailureClassifier
{
    /// <summary>A peer's collective that stopped because another rank failed: never a root cause.</summary>
    public static bool IsEcho(Exception ex) => Unwrap(ex) is RankAbortedException;

    public static Failure Classify(Exception ex)
    {
        var inner = Unwrap(ex);
        return inner switch
        {
            StepAnomalyException anomaly => new Failure(FailureKind.Anomaly, anomaly.Message, anomaly.RewindTo, anomaly.Windows.Max(w => w.Step)),
            RankHungException hung => new Failure(FailureKind.Hang, hung.Message, Workers: [hung.Worker]),
            StragglerException straggler => new Failure(FailureKind.Hang, straggler.Message, Workers: straggler.Workers),
            _ => new Failure(KindOf(inner), inner.Message),
        };
    }

    private static FailureKind KindOf(Exception ex) => ex switch
    {
        // The worker's silo died or stopped (declared dead, unreachable, a call cut off or timed out), its worker
        // lost the job's state, a peer stopped sending, or — when only echoes remain — a worker left by itself.
        SiloUnavailableException or OrleansMessageRejectionException or ConnectionFailedException => FailureKind.WorkerLost,
        WorkerLostException or PeerTimeoutException or RankAbortedException => FailureKind.WorkerLost,
        WorkerNotHoldingJobException => FailureKind.WorkerReset,
        TimeoutException or OperationCanceledException => FailureKind.WorkerLost,
        ReplicaUnavailableException => FailureKind.ReplicaUnavailable,
        ClusterRequestException or FlmUserException or InvalidCheckpointException => FailureKind.UserError,
        InconsistentStateException => FailureKind.StateConflict,
        StateStorageException => FailureKind.StorageUnavailable,
        _ => FailureKind.Fatal,
    };

    private static Exception Unwrap(Exception ex) => ex is AggregateException { InnerExceptions.Count: > 0 } agg ? Unwrap(agg.InnerExceptions[0]) : ex;
}

/// <summary>
/// A step's result was not committed (<see cref="FailureKind.Anomaly"/>): the job skips <see cref="Windows"/>
/// and rolls back to a point at or before the first of them.
/// </summary>
public sealed class StepAnomalyException(string message, IReadOnlyList<SkippedWindow> windows) : Exception(message)
{
    public IReadOnlyList<SkippedWindow> Windows { get; } = windows;
    public long RewindTo => Windows.Min(w => w.Step);
}

/// <summary>The job's state could not be written to grain storage (the provider failed; not a conflicting write).</summary>
public sealed class StateStorageException(Exception inner) : Exception($"the job's state could not be saved: {inner.Message}", inner);

/// <summary>Ranks that straggle, to be given other GPUs (recovery.replace_stragglers).</summary>
public sealed class StragglerException(string message, IReadOnlyList<string> workers) : Exception(message)
{
    public IReadOnlyList<string> Workers { get; } = workers;
}
