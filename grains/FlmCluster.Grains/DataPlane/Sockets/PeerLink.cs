using System.Net.Sockets;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Grains.DataPlane.Sockets;

/// <summary>
/// This rank's link to one peer: the peer's messages arrive in <see cref="Inbox"/>, this rank's leave through
/// <see cref="Sender"/>. Across silos both directions share one connection; on one silo the sender writes
/// straight into the peer's inbox. A failure of either direction fails both.
/// </summary>
internal sealed class PeerLink
{
    private readonly IPieceTransport _transport;
    private readonly Thread? _reader;

    public int Peer { get; }
    public Inbox Inbox { get; }
    public LinkSender Sender { get; }

    private PeerLink(int peer, Inbox inbox, IPieceTransport transport, string name, string peerName, TimeSpan heartbeat, SocketConnection? connection)
    {
        Peer = peer;
        Inbox = inbox;
        _transport = transport;
        Sender = new LinkSender($"{name} send", peerName, transport, heartbeat, Fail);
        if (connection is not null)
        {
            _reader = new Thread(() => connection.ReadLoop(inbox, peerName, Fail)) { IsBackground = true, Name = $"{name} receive" };
            _reader.Start();
        }
    }

    public static PeerLink OverSocket(int peer, Inbox inbox, SocketConnection connection, string name, string peerName, TimeSpan heartbeat) =>
        new(peer, inbox, connection, name, peerName, heartbeat, connection);

    public static PeerLink InProcess(int peer, Inbox inbox, Inbox peersInbox, string self, string name, string peerName) =>
        new(peer, inbox, new LocalTransport(peersInbox, self), name, peerName, Timeout.InfiniteTimeSpan, null);

    public void Fail(LinkFailure failure)
    {
        Inbox.Fail(failure);
        Sender.Fail(failure);
        _transport.Close();
    }

    /// <summary>Leaves on purpose: goodbye to the peer, then the connection closes (at once if the peer does not take it).</summary>
    public void Leave(LinkFailure failure)
    {
        Inbox.Fail(failure);
        Sender.Leave();
        _ = Task.Delay(TimeSpan.FromSeconds(1)).ContinueWith(_ => Fail(failure), TaskScheduler.Default);
    }
}

/// <summary>Pieces to a peer on the same silo: copied straight from this rank's tensor into where the peer receives them.</summary>
internal sealed class LocalTransport(Inbox peersInbox, string self) : IPieceTransport
{
    private Receive? _current;

    public void Write(uint tag, MessageShape shape, int piece, ReadOnlySpan<byte> data)
    {
        if (piece == 0)
            _current = peersInbox.Begin(tag, shape);
        var target = peersInbox.Target(_current!, piece);
        data.CopyTo(target.Span);
        peersInbox.Commit(_current!, piece, target);
    }

    public void Heartbeat()
    {
    }

    public void Goodbye() => peersInbox.Fail(LinkFailure.Aborted($"{self} left the job"));

    public void Close()
    {
    }
}

/// <summary>
/// One TCP connection (TLS when configured) between two ranks on different silos, after the handshake: frames of
/// <see cref="Wire"/> both ways. Pieces are written from and read into tensor memory without managed copies
/// (plain TCP; TLS encrypts through its own buffers). Reads time out after the silence limit: a peer sends
/// heartbeats while idle, so silence means it is gone.
/// </summary>
internal sealed unsafe class SocketConnection(Socket socket, Stream stream, TimeSpan silence) : IPieceTransport
{
    private const int CombineBytes = 64 << 10;
    private readonly byte[] _out = new byte[Wire.HeaderBytes + CombineBytes];
    private volatile bool _closed;

    public Socket Socket { get; } = socket;

    public void Write(uint tag, MessageShape shape, int piece, ReadOnlySpan<byte> data)
    {
        Wire.Write(_out, new Wire.Header(Wire.Kind.Data, tag, shape, piece, data.Length));
        // The header goes out with the first bytes of the piece (all of a small one): a header alone would wake
        // the receiver for 32 bytes.
        var head = Math.Min(data.Length, CombineBytes);
        data[..head].CopyTo(_out.AsSpan(Wire.HeaderBytes));
        stream.Write(_out, 0, Wire.HeaderBytes + head);
        if (head < data.Length)
            stream.Write(data[head..]);
    }

    public void Heartbeat() => Signal(Wire.Kind.Heartbeat);

    public void Goodbye() => Signal(Wire.Kind.Goodbye);

    private void Signal(Wire.Kind kind)
    {
        Wire.Write(_out, new Wire.Header(kind, 0, default, 0, 0));
        stream.Write(_out, 0, Wire.HeaderBytes);
    }

    public void Close()
    {
        if (_closed)
            return;
        _closed = true;
        try
        {
            Socket.Shutdown(SocketShutdown.Both);
        }
        catch (Exception)
        {
            // already gone
        }
        stream.Dispose();
        Socket.Dispose();
    }

    /// <summary>The receiving half (its own thread): frames into the inbox until the connection ends.</summary>
    public void ReadLoop(Inbox inbox, string peer, Action<LinkFailure> fail)
    {
        var header = new byte[Wire.HeaderBytes];
        Receive? current = null;
        var next = 0;
        try
        {
            Socket.ReceiveTimeout = (int)silence.TotalMilliseconds;
            while (true)
            {
                stream.ReadExactly(header);
                var h = Wire.Read(header);
                if (h.Kind == Wire.Kind.Heartbeat)
                    continue;
                if (h.Kind == Wire.Kind.Goodbye)
                {
                    fail(LinkFailure.Aborted($"{peer} left the job"));
                    return;
                }
                if (h.Piece == 0)
                {
                    if (current is not null && next < current.Shape.Pieces)
                        throw new InvalidDataException($"a new message began after piece {next} of {current.Shape.Pieces}");
                    current = inbox.Begin(h.Tag, h.Shape);
                }
                else if (current is null || h.Tag != current.Tag || h.Shape != current.Shape || h.Piece != next)
                    throw new InvalidDataException($"piece {h.Piece} does not continue the message in progress");
                var target = inbox.Target(current, h.Piece);
                try
                {
                    stream.ReadExactly(target.Span);
                }
                catch
                {
                    inbox.Abandon(current, target);
                    throw;
                }
                inbox.Commit(current, h.Piece, target);
                next = h.Piece + 1;
            }
        }
        catch (Exception ex) when (ex is CollectiveAbortedException or CollectiveTimeoutException or InvalidOperationException)
        {
            // the inbox already failed: whoever failed it told the waiters why
        }
        catch (Exception ex)
        {
            if (_closed)
                return;
            var why = ex switch
            {
                EndOfStreamException => "the connection was closed by the peer",
                IOException { InnerException: SocketException { SocketErrorCode: SocketError.TimedOut } } =>
                    $"nothing arrived for {silence.TotalSeconds:0}s (not even a heartbeat)",
                InvalidDataException => $"it sent a malformed frame ({ex.Message})",
                _ => ex.Message,
            };
            fail(LinkFailure.Lost($"lost the connection to {peer}: {why}"));
        }
    }
}
