using System.Collections.Concurrent;
using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace FlmCluster.Grains.DataPlane.Sockets;

/// <summary>What a rank brings to its socket session: who it is, the job's session key and how to find other silos' data ports.</summary>
/// <param name="Node">This silo's node: ranks on the same node are reached in memory.</param>
/// <param name="EndpointOf">The data endpoint of another node's silo (throws when there is none).</param>
public sealed record SessionSpec(
    string JobId, int Incarnation, int Rank, IReadOnlyList<string> RankWorkers, byte[] Key, string Node,
    Func<string, IPEndPoint> EndpointOf, TimeSpan Timeout);

/// <summary>
/// A silo's socket data plane: the data port, bound when the silo is configured (so its port can be published
/// in the silo's metadata), the connections it accepts, and the sessions of the ranks on this silo. An accepted
/// connection is handed to the session it names once it proves that session's key; one that names an older
/// incarnation than the rank now runs is refused as stale, and whatever it sends is never read.
/// </summary>
public sealed class SocketDataPlane : IDisposable
{
    private const int ConcurrentHandshakes = 64;
    private readonly Socket _listener;
    private readonly DataPlaneTls? _tls;
    private readonly ConcurrentDictionary<(string Job, int Incarnation, int Rank), SocketSession> _sessions = new();
    private readonly ConcurrentDictionary<(string Job, int Rank), int> _newest = new();
    private readonly SemaphoreSlim _handshakes = new(ConcurrentHandshakes);
    private readonly CancellationTokenSource _stop = new();
    private ILogger _log = NullLogger.Instance;
    private Task? _accepting;

    public SocketDataPlaneOptions Options { get; }

    /// <summary>Where peers reach this silo's data port.</summary>
    public IPEndPoint Endpoint { get; }

    internal DataPlaneTls? Tls => _tls;

    /// <summary>Binds the data port (and loads the TLS files); throws <see cref="ArgumentException"/> with the setting to fix.</summary>
    public SocketDataPlane(SocketDataPlaneOptions options)
    {
        Options = options;
        _tls = DataPlaneTls.Load(options);
        _listener = new Socket(options.ListenAddress.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        try
        {
            _listener.Bind(new IPEndPoint(options.ListenAddress, options.Port));
            _listener.Listen(256);
        }
        catch (SocketException ex)
        {
            _listener.Dispose();
            throw new ArgumentException($"data port {options.ListenAddress}:{options.Port} cannot be bound ({ex.Message}); choose another Flm:DataPort (0: any free port)");
        }
        Endpoint = new IPEndPoint(options.AdvertisedAddress, ((IPEndPoint)_listener.LocalEndPoint!).Port);
    }

    /// <summary>Starts accepting connections.</summary>
    public void Start(ILogger? log = null)
    {
        _log = log ?? NullLogger.Instance;
        _accepting ??= Task.Run(AcceptLoop);
    }

    /// <summary>Opens a rank's session; connections to its peers are made when a collective first needs them.</summary>
    public SocketSession Open(SessionSpec spec)
    {
        var session = new SocketSession(this, spec);
        var key = (spec.JobId, spec.Incarnation, spec.Rank);
        if (_sessions.TryGetValue(key, out var previous))
            previous.Leave("the rank was rebuilt");
        _sessions[key] = session;
        _newest.AddOrUpdate((spec.JobId, spec.Rank), spec.Incarnation, (_, seen) => Math.Max(seen, spec.Incarnation));
        return session;
    }

    internal void Forget(SocketSession session)
    {
        var key = (session.JobId, session.Incarnation, session.Rank);
        if (!_sessions.TryRemove(new KeyValuePair<(string, int, int), SocketSession>(key, session)))
            return;
        // Remembered for a while: a peer on this silo may still come for what this rank sent before it left.
        var now = DateTime.UtcNow;
        _left[key] = now;
        foreach (var (old, at) in _left)
            if (now - at > LeftMemory)
                _left.TryRemove(old, out _);
    }

    private static readonly TimeSpan LeftMemory = TimeSpan.FromMinutes(10);
    private readonly ConcurrentDictionary<(string Job, int Incarnation, int Rank), DateTime> _left = new();

    /// <summary>Whether the rank's session of that incarnation was here and has ended.</summary>
    internal bool HasLeft(string jobId, int incarnation, int rank) => _left.ContainsKey((jobId, incarnation, rank));

    /// <summary>Whether the rank already runs a newer incarnation of the job here.</summary>
    internal bool IsStale(string jobId, int incarnation, int rank) =>
        _newest.TryGetValue((jobId, rank), out var newest) && newest > incarnation;

    /// <summary>The session of a rank on this silo, once it is open (null when it does not open in time, or only a newer incarnation does).</summary>
    internal async Task<SocketSession?> FindAsync(string jobId, int incarnation, int rank, TimeSpan patience, CancellationToken cancel)
    {
        var deadline = DateTime.UtcNow + patience;
        while (true)
        {
            if (_sessions.TryGetValue((jobId, incarnation, rank), out var session))
                return session;
            if (IsStale(jobId, incarnation, rank) || HasLeft(jobId, incarnation, rank) || DateTime.UtcNow > deadline)
                return null;
            await Task.Delay(20, cancel);
        }
    }

    private async Task AcceptLoop()
    {
        while (!_stop.IsCancellationRequested)
        {
            Socket socket;
            try
            {
                socket = await _listener.AcceptAsync(_stop.Token);
            }
            catch (Exception ex) when (ex is OperationCanceledException or ObjectDisposedException or SocketException)
            {
                if (_stop.IsCancellationRequested)
                    return;
                continue;
            }
            if (!_handshakes.Wait(0))
            {
                socket.Dispose(); // too many half-open connections: this one is not served
                continue;
            }
            _ = Task.Run(() => Serve(socket));
        }
    }

    private async Task Serve(Socket socket)
    {
        Stream? stream = null;
        var handedOver = false;
        try
        {
            socket.NoDelay = true;
            using var timeout = CancellationTokenSource.CreateLinkedTokenSource(_stop.Token);
            timeout.CancelAfter(Options.HandshakeTimeout * 2);
            stream = new NetworkStream(socket, ownsSocket: true);
            if (_tls is not null)
                stream = await _tls.ServerAsync(stream, timeout.Token);
            var nonce = Handshake.NewNonce();
            await stream.WriteAsync(Handshake.Challenge(nonce), timeout.Token);
            var hello = await Handshake.ReadHelloAsync(stream, timeout.Token);
            var session = await FindAsync(hello.JobId, hello.Incarnation, hello.To, Options.HandshakeTimeout, timeout.Token);
            var status = session is null
                ? IsStale(hello.JobId, hello.Incarnation, hello.To) ? Handshake.Status.Stale : Handshake.Status.UnknownSession
                : !Handshake.ProvesKey(hello, nonce, session.Key) ? Handshake.Status.WrongKey
                : hello.From < 0 || hello.From >= hello.To ? Handshake.Status.Refused
                : session.Offer(hello.From, new SocketConnection(socket, stream, Options.Silence));
            handedOver = status == Handshake.Status.Accepted;
            await stream.WriteAsync(Handshake.Answer(status, hello, nonce, session?.Key), timeout.Token);
            if (!handedOver)
                _log.LogInformation("Data plane: refused rank {From} of job {Job} (incarnation {Incarnation}) for rank {To}: {Status}",
                    hello.From, hello.JobId, hello.Incarnation, hello.To, status);
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            _log.LogDebug("Data plane: a connection from {Remote} failed its handshake: {Message}", socket.RemoteEndPoint, ex.Message);
        }
        finally
        {
            if (!handedOver)
            {
                stream?.Dispose();
                socket.Dispose();
            }
            _handshakes.Release();
        }
    }

    public void Dispose()
    {
        _stop.Cancel();
        _listener.Dispose();
        foreach (var session in _sessions.Values)
            session.Leave("the silo stops");
    }
}
