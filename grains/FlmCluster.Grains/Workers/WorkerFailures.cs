using FlmCluster.Grains.Abstractions;
using FlmCluster.Training;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Jobs;

namespace FlmCluster.Grains.Workers;

/// <summary>
/// Turns what a rank's work threw on its device thread into the typed failure its coordinator decides on: an
/// aborted collective is an echo, a timed-out one a lost peer, bad input the user's to fix, anything else the
/// rank's own failure.
/// </summary>
public static class WorkerFailures
{
    public static Exception Translate(Exception ex, string worker, int rank)
    {
        if (ex is AggregateException aggregate)
        {
            // Several sends or receives failed at once (messages to several peers): the root cause of them.
            var inner = aggregate.Flatten().InnerExceptions.Select(e => Translate(e, worker, rank)).ToList();
            return inner.Count == 0 ? new RankFailedException(worker, rank, ex.GetType().Name, ex.Message)
                : RootCause.Of(inner, e => e is RankAbortedException, e => e is PeerTimeoutException or WorkerLostException or WorkerNotHoldingJobException);
        }
        return ex switch
        {
            Training.Parallel.CollectiveAbortedException => new RankAbortedException(worker, ex.Message),
            Training.Parallel.CollectiveTimeoutException => new PeerTimeoutException(worker, ex.Message),
            // A tensor sent to a peer whose server went away (the peer may have answered its step just before).
            Orleans.Runtime.SiloUnavailableException or Orleans.Runtime.Messaging.ConnectionFailedException or Orleans.Runtime.OrleansMessageRejectionException
                => new PeerTimeoutException(worker, $"rank {rank} on {worker} lost a peer: its server is out of reach"),
            // Orleans cancelled a call the rank's work waited on (its own silo stopping, a peer's call cut off);
            // the job's own aborts arrive as CollectiveAbortedException.
            OperationCanceledException => new WorkerLostException(worker, $"rank {rank} on {worker} was cut off: a call it waited on was cancelled"),
            FlmUserException or InvalidCheckpointException => new ClusterRequestException(ex.Message),
            ClusterRequestException or WorkerLostException or WorkerNotHoldingJobException or ReplicaUnavailableException or RankHungException
                or RankAbortedException or PeerTimeoutException or RankFailedException => ex,
            _ => new RankFailedException(worker, rank, ex.GetType().Name, ex.Message),
        };
    }
}
