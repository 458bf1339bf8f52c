using System.Collections.Concurrent;
using System.Net.Sockets;
using FlmCluster.Grains.Placement;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Grains.DataPlane.Sockets;

/// <summary>
/// One rank's part in one incarnation of a job on the socket data plane: a link per peer it talks to, made when
/// a collective first needs it and kept for every later step. A peer on the same node is linked in memory; one
/// on another silo over a connection the lower rank dials and the higher rank accepts. When anything fails, the
/// whole session fails: every link closes (with a goodbye when this rank leaves on purpose), so peers stop
/// waiting for it at once.
/// </summary>
public sealed class SocketSession
{
    private readonly SocketDataPlane _plane;
    private readonly SessionSpec _spec;
    private readonly Dictionary<int, PeerLink> _links = [];
    private readonly ConcurrentDictionary<int, Inbox> _inboxes = new();
    private readonly ConcurrentDictionary<int, TaskCompletionSource<SocketConnection>> _offers = new();
    private readonly object _gate = new();
    private LinkFailure? _failure;

    internal SocketSession(SocketDataPlane plane, SessionSpec spec)
    {
        _plane = plane;
        _spec = spec;
    }

    public string JobId => _spec.JobId;
    public int Incarnation => _spec.Incarnation;
    public int Rank => _spec.Rank;
    public int World => _spec.RankWorkers.Count;
    internal byte[] Key => _spec.Key;
    internal TimeSpan Timeout => _spec.Timeout;

    private string Self => $"rank {Rank} ({_spec.RankWorkers[Rank]})";

    private string Describe(int peer) => $"rank {peer} ({_spec.RankWorkers[peer]})";

    private bool IsLocal(int peer) => NodeMetadata.NodeOfWorker(_spec.RankWorkers[peer]) == _spec.Node;

    /// <summary>Where <paramref name="peer"/>'s messages to this rank arrive.</summary>
    internal Inbox InboxFor(int peer)
    {
        var inbox = _inboxes.GetOrAdd(peer, p => new Inbox(Describe(p), _plane.Options.PeerBufferBytes));
        if (Failure is { } failure)
            inbox.Fail(failure);
        return inbox;
    }

    internal LinkFailure? Failure
    {
        get
        {
            lock (_gate)
                return _failure;
        }
    }

    /// <summary>The link to <paramref name="peer"/>, made now if this is the first time (on the rank's device thread).</summary>
    internal PeerLink Link(int peer)
    {
        lock (_gate)
        {
            if (_failure is { } failed)
                throw failed.ToException();
            if (_links.TryGetValue(peer, out var existing))
                return existing;
        }
        if (peer < 0 || peer >= World || peer == Rank)
            throw new ArgumentOutOfRangeException(nameof(peer), $"rank {Rank} has no peer {peer} among {World} ranks");
        var name = $"flm data {JobId}#{Incarnation} {Rank}>{peer}";
        PeerLink link;
        if (IsLocal(peer))
            link = PeerLink.InProcess(peer, InboxFor(peer), LocalPeersInbox(peer), Self, name, Describe(peer));
        else
        {
            var connection = peer > Rank ? Dial(peer) : Accepted(peer);
            link = PeerLink.OverSocket(peer, InboxFor(peer), connection, name, Describe(peer), _plane.Options.Heartbeat);
        }
        lock (_gate)
        {
            if (_failure is { } failed)
            {
                link.Fail(failed);
                throw failed.ToException();
            }
            _links[peer] = link;
        }
        return link;
    }

    /// <summary>
    /// Where this rank's messages to a peer on this silo go: the peer's inbox for this rank. A peer that has
    /// already left (having delivered what it sent here, which is still read) takes nothing more.
    /// </summary>
    private Inbox LocalPeersInbox(int peer)
    {
        if (_plane.HasLeft(JobId, Incarnation, peer))
        {
            var closed = new Inbox(Describe(peer), 0);
            closed.Fail(LinkFailure.Aborted($"{Describe(peer)} left the job"));
            return closed;
        }
        var other = _plane.FindAsync(JobId, Incarnation, peer, Timeout, CancellationToken.None).GetAwaiter().GetResult()
            ?? throw (_plane.IsStale(JobId, Incarnation, peer)
                ? LinkFailure.Aborted($"{Describe(peer)} already runs a newer incarnation of job {JobId}")
                : LinkFailure.Lost($"{Describe(peer)} did not join job {JobId} on this silo within {Timeout.TotalSeconds:0}s")).ToException();
        if (!other.Key.AsSpan().SequenceEqual(Key))
            throw LinkFailure.Aborted($"{Describe(peer)} holds another session key of job {JobId}: the job is being rebuilt").ToException();
        return other.InboxFor(Rank);
    }

    /// <summary>Connects to a higher rank's silo and proves this session's key.</summary>
    private SocketConnection Dial(int peer)
    {
        var endpoint = _spec.EndpointOf(NodeMetadata.NodeOfWorker(_spec.RankWorkers[peer]));
        var options = _plane.Options;
        var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        Stream? stream = null;
        try
        {
            try
            {
                socket.ConnectAsync(endpoint).WaitAsync(options.HandshakeTimeout).GetAwaiter().GetResult();
            }
            catch (Exception ex) when (ex is SocketException or TimeoutException)
            {
                throw LinkFailure.Lost($"{Describe(peer)}: its silo's data port {endpoint} does not accept connections ({ex.Message})").ToException();
            }
            // The acceptor may keep this handshake waiting while its rank is still being built.
            socket.ReceiveTimeout = socket.SendTimeout = (int)(options.HandshakeTimeout * 2).TotalMilliseconds;
            stream = new NetworkStream(socket, ownsSocket: true);
            if (_plane.Tls is { } tls)
                stream = tls.Client(stream, options.HandshakeTimeout);
            var (status, authentic) = Handshake.Dial(stream, JobId, Incarnation, Rank, peer, Key);
            var refusal = status switch
            {
                Handshake.Status.Accepted when authentic => null,
                Handshake.Status.Accepted => LinkFailure.Lost($"{Describe(peer)} at {endpoint} accepted without proving the session key"),
                Handshake.Status.Stale => LinkFailure.Aborted($"{Describe(peer)} already runs a newer incarnation of job {JobId}"),
                Handshake.Status.WrongKey => LinkFailure.Aborted($"{Describe(peer)} holds another session key of job {JobId}: the job is being rebuilt"),
                Handshake.Status.UnknownSession => LinkFailure.Lost($"{Describe(peer)} is not active at {endpoint}"),
                _ => LinkFailure.Lost($"{Describe(peer)} at {endpoint} refused the connection ({status})"),
            };
            if (refusal is not null)
                throw refusal.ToException();
            socket.SendTimeout = (int)options.Silence.TotalMilliseconds;
            return new SocketConnection(socket, stream, options.Silence);
        }
        catch (Exception ex) when (ex is IOException or SocketException or InvalidDataException or TimeoutException or System.Security.Authentication.AuthenticationException)
        {
            stream?.Dispose();
            socket.Dispose();
            throw LinkFailure.Lost($"{Describe(peer)}: the data connection to {endpoint} failed ({ex.Message})").ToException();
        }
        catch
        {
            stream?.Dispose();
            socket.Dispose();
            throw;
        }
    }

    /// <summary>Waits for a lower rank's connection, which the silo's listener hands over after its handshake.</summary>
    private SocketConnection Accepted(int peer)
    {
        var offer = _offers.GetOrAdd(peer, _ => new TaskCompletionSource<SocketConnection>(TaskCreationOptions.RunContinuationsAsynchronously));
        try
        {
            if (!offer.Task.Wait(Timeout))
                throw LinkFailure.Lost($"{Describe(peer)} did not connect within {Timeout.TotalSeconds:0}s").ToException();
        }
        catch (AggregateException ex) when (ex.InnerException is not null)
        {
            throw ex.InnerException;
        }
        return offer.Task.Result;
    }

    /// <summary>A connection from <paramref name="from"/> that passed the handshake (from the listener).</summary>
    internal Handshake.Status Offer(int from, SocketConnection connection)
    {
        if (from >= World)
            return Handshake.Status.Refused;
        lock (_gate)
        {
            if (_failure is not null)
                return Handshake.Status.UnknownSession;
            var offer = _offers.GetOrAdd(from, _ => new TaskCompletionSource<SocketConnection>(TaskCreationOptions.RunContinuationsAsynchronously));
            return offer.TrySetResult(connection) ? Handshake.Status.Accepted : Handshake.Status.Refused;
        }
    }

    /// <summary>This rank leaves on purpose (its worker left the job): every wait, now or later, fails as aborted.</summary>
    public void Leave(string reason) => Fail(LinkFailure.Aborted($"{Self} left job {JobId}: {reason}"));

    /// <summary>
    /// Ends the session: every wait, now or later, throws the failure's exception, and every link says goodbye
    /// and closes, so peers see this rank leave (an echo) rather than lose it; only a rank that dies without a
    /// word is a lost peer to them.
    /// </summary>
    internal void Fail(LinkFailure failure)
    {
        List<PeerLink> links;
        lock (_gate)
        {
            if (_failure is not null)
                return;
            _failure = failure;
            links = [.. _links.Values];
            // A connection handed over but never taken up is closed here; one taken up closes with its link.
            foreach (var (peer, offer) in _offers)
                if (!offer.TrySetException(failure.ToException()) && offer.Task.IsCompletedSuccessfully && !_links.ContainsKey(peer))
                    offer.Task.Result.Close();
        }
        _plane.Forget(this);
        foreach (var inbox in _inboxes.Values)
            inbox.Fail(failure);
        foreach (var link in links)
            link.Leave(failure);
    }
}
