using FlmCluster.Training.Parallel;

namespace FlmCluster.Grains.DataPlane.Sockets;

/// <summary>Why a link (or a whole session) stopped: decides the typed exception every later wait on it throws.</summary>
internal sealed record LinkFailure(LinkFailure.Cause Why, string Message)
{
    public enum Cause
    {
        /// <summary>The peer is gone: its connection broke or fell silent, or a wait outlasted the collective timeout.</summary>
        PeerLost,

        /// <summary>This rank or the peer left the job on purpose: an echo of a failure elsewhere.</summary>
        Aborted,

        /// <summary>The ranks disagree on what comes next (a bug, not a fault of the network).</summary>
        Schedule,
    }

    /// <summary>A new exception each time, so that every waiter gets its own stack.</summary>
    public Exception ToException() => Why switch
    {
        Cause.PeerLost => new CollectiveTimeoutException(Message),
        Cause.Aborted => new CollectiveAbortedException(Message),
        _ => new InvalidOperationException(Message),
    };

    public static LinkFailure Lost(string message) => new(Cause.PeerLost, message);
    public static LinkFailure Aborted(string message) => new(Cause.Aborted, message);
    public static LinkFailure Schedule(string message) => new(Cause.Schedule, message);
}
