namespace FlmCluster.Training.Parallel;

/// <summary>
/// A collective that stopped because the job was aborted — another rank failed, or this rank left the job.
/// It is an echo of a failure elsewhere, never the root cause of one.
/// </summary>
public sealed class CollectiveAbortedException(string message, Exception? cause = null) : OperationCanceledException(message, cause);

/// <summary>
/// A collective that lost a peer: it waited longer than its timeout (the peer is gone or hung), or the connection
/// to the peer broke or fell silent.
/// </summary>
public sealed class CollectiveTimeoutException(string message) : TimeoutException(message);
