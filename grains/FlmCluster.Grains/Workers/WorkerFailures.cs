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
            FlmUserException or InvalidCheckpointException => new ClusterRequestException(ex.Message),
            ClusterRequestException or WorkerLostException or WorkerNotHoldingJobException or ReplicaUnavailableException or RankHungException
                or RankAbortedException or PeerTimeoutException or RankFailedException => ex,
            _ => new RankFailedException(worker, rank, ex.GetType().Name, ex.Message),
        };
    }
}
