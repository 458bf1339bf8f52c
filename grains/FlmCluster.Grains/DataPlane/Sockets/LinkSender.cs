using System.Diagnostics;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Grains.DataPlane.Sockets;

/// <summary>Where a link's pieces go: a socket to another silo, or the peer's inbox on this silo.</summary>
internal interface IPieceTransport
{
    void Write(uint tag, MessageShape shape, int piece, ReadOnlySpan<byte> data);

    /// <summary>Proof of life while there is nothing to send (a no-op where the peer cannot vanish silently).</summary>
    void Heartbeat();

    /// <summary>Tells the peer this rank leaves on purpose.</summary>
    void Goodbye();

    /// <summary>Unblocks a write or read in progress; the transport is unusable afterwards.</summary>
    void Close();
}

/// <summary>A message on its way out: its pieces are queued as the collective produces them and sent in order.</summary>
/// <param name="Inline">Whether the caller may write it itself when the link is idle (it waits for the message anyway).</param>
internal sealed class Outgoing(uint tag, MessageShape shape, bool inline)
{
    public uint Tag { get; } = tag;
    public MessageShape Shape { get; } = shape;
    public bool Inline { get; } = inline;

    /// <summary>This link's own copy of a point-to-point message's bytes (the caller's tensor is free again).</summary>
    public byte[]? Copy;
    public int Queued;
    public volatile int Sent;
    public bool Detached;

    /// <summary>The piece a caller waits for: the sender wakes it only when that one has left.</summary>
    public int Wanted = int.MaxValue;
}

/// <summary>
/// The sending half of a link: one thread that writes queued pieces in order, from the tensor's own memory, so
/// the rank's device thread reduces the next piece while this one is on the wire. Idle, it sends heartbeats.
/// A message its caller waits for anyway (a point-to-point send, a single piece) is written by the caller
/// itself when the link is idle, which saves a thread hand-over per message.
/// </summary>
internal sealed unsafe class LinkSender
{
    private readonly object _gate = new();
    private readonly Queue<(Outgoing Message, int Piece, RawBuffer Data)> _queue = new();
    private readonly IPieceTransport _transport;
    private readonly TimeSpan _heartbeat;
    private readonly Action<LinkFailure> _fail;
    private readonly string _peer;
    private readonly Thread _thread;
    private static readonly Outgoing Heartbeat = new(0, default, false);

    /// <summary>
    /// Point-to-point messages up to this size are written by the caller, from its own tensor, when the link is
    /// idle: the peer's receiver takes that much whether or not it was asked for yet, so the write cannot wait
    /// on the peer's schedule.
    /// </summary>
    public const int InlineBytes = 1 << 20; // the least a receiver holds (Flm:DataBufferMiB ≥ 1)

    private const int SpareCopies = 4;
    private readonly Stack<byte[]> _spareCopies = new();
    private Outgoing? _open;
    private Outgoing? _inFlight;
    private LinkFailure? _failure;
    private bool _leaving;

    public LinkSender(string name, string peer, IPieceTransport transport, TimeSpan heartbeat, Action<LinkFailure> fail)
    {
        _peer = peer;
        _transport = transport;
        _heartbeat = heartbeat;
        _fail = fail;
        _thread = new Thread(Run) { IsBackground = true, Name = name };
        _thread.Start();
    }

    /// <summary>Starts the next message to the peer (the previous one must be queued whole).</summary>
    public Outgoing Begin(uint tag, MessageShape shape, bool inline = false)
    {
        lock (_gate)
        {
            ThrowIfFailed();
            if (_open is { } open && open.Queued < open.Shape.Pieces)
                throw new InvalidOperationException($"a message to {_peer} begins before the previous one is queued whole");
            return _open = new Outgoing(tag, shape, inline || shape.Pieces == 1);
        }
    }

    /// <summary>Queues the next piece of <paramref name="message"/>; its memory must stay unchanged until it is sent.</summary>
    public void Queue(Outgoing message, int piece, RawBuffer data)
    {
        lock (_gate)
        {
            ThrowIfFailed();
            if (piece != message.Queued || data.Length != message.Shape.Size(piece))
                throw new InvalidOperationException($"piece {piece} of a message to {_peer} is queued out of order or with {data.Length} bytes");
            message.Queued++;
            if (!message.Inline || _queue.Count > 0 || _inFlight is not null)
            {
                _queue.Enqueue((message, piece, data));
                Monitor.PulseAll(_gate); // the sender thread, whoever else waits here
                return;
            }
            _inFlight = message;
        }
        Send(message, piece, data);
    }

    /// <summary>
    /// A buffered point-to-point send: the bytes are copied out and sent from the copy, so the call returns at once
    /// whatever the peer is doing (two stages of a pipeline both send before they receive).
    /// </summary>
    public void SendCopy(uint tag, MessageShape shape, RawBuffer data)
    {
        byte[]? copy = null;
        lock (_gate)
            if (_spareCopies.TryPeek(out var spare) && spare.Length >= data.Length)
                copy = _spareCopies.Pop();
        copy ??= GC.AllocateUninitializedArray<byte>(Math.Max(1, data.Length), pinned: true);
        data.Span.CopyTo(copy);
        var message = Begin(tag, shape);
        message.Copy = copy;
        var at = Receive.Pin(copy);
        for (var k = 0; k < shape.Pieces; k++)
            Queue(message, k, new RawBuffer(at + shape.Offset(k), shape.Size(k)));
    }

    public static bool IsSent(Outgoing message, int piece) => message.Sent > piece;

    /// <summary>Waits until piece <paramref name="piece"/> (and every piece before it) has left.</summary>
    public void WaitSent(Outgoing message, int piece, TimeSpan timeout, string what)
    {
        if (message.Sent > piece)
            return;
        var start = Stopwatch.GetTimestamp();
        lock (_gate)
        {
            message.Wanted = piece;
            while (message.Sent <= piece)
            {
                ThrowIfFailed();
                var left = timeout - Stopwatch.GetElapsedTime(start);
                if (left <= TimeSpan.Zero)
                    throw new CollectiveTimeoutException($"{what} waited more than {timeout.TotalSeconds:0}s to send to {_peer}");
                Monitor.Wait(_gate, left);
            }
            message.Wanted = int.MaxValue;
        }
    }

    /// <summary>Stops sending <paramref name="message"/>: once this returns, nothing reads its memory any more.</summary>
    public void Detach(Outgoing message)
    {
        lock (_gate)
        {
            message.Detached = true;
            while (ReferenceEquals(_inFlight, message))
                Monitor.Wait(_gate);
        }
    }

    public void Fail(LinkFailure failure)
    {
        lock (_gate)
        {
            _failure ??= failure;
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>Says goodbye to the peer once what is queued has gone, then stops.</summary>
    public void Leave()
    {
        lock (_gate)
        {
            _leaving = true;
            Monitor.PulseAll(_gate);
        }
    }

    private void ThrowIfFailed()
    {
        if (_failure is { } f)
            throw f.ToException();
    }

    private void Run()
    {
        while (true)
        {
            (Outgoing Message, int Piece, RawBuffer Data) item;
            lock (_gate)
            {
                var idle = false;
                while ((_queue.Count == 0 || _inFlight is not null) && !_leaving && _failure is null && !idle)
                    idle = !Monitor.Wait(_gate, _heartbeat);
                if (_failure is not null)
                    return;
                if (_inFlight is not null)
                    continue; // the caller is writing a message itself
                if (_queue.Count == 0)
                {
                    if (_leaving)
                    {
                        Quietly(_transport.Goodbye);
                        Quietly(_transport.Close);
                        return;
                    }
                    item = (Heartbeat, 0, default);
                }
                else
                {
                    item = _queue.Dequeue();
                    if (item.Message.Detached)
                    {
                        item.Message.Sent = item.Piece + 1;
                        continue;
                    }
                }
                _inFlight = item.Message;
            }
            if (!Send(item.Message, item.Piece, item.Data))
                return;
        }
    }

    /// <summary>Writes one piece (or a heartbeat); on failure fails the link and returns false.</summary>
    private bool Send(Outgoing message, int piece, RawBuffer data)
    {
        try
        {
            if (ReferenceEquals(message, Heartbeat))
                _transport.Heartbeat();
            else
                _transport.Write(message.Tag, message.Shape, piece, data.Span);
        }
        catch (Exception ex)
        {
            var failure = ex is CollectiveAbortedException
                ? LinkFailure.Aborted($"{_peer} left the job")
                : LinkFailure.Lost($"lost the connection to {_peer} while sending ({ex.Message})");
            lock (_gate)
            {
                _inFlight = null;
                Monitor.PulseAll(_gate);
            }
            _fail(failure);
            return false;
        }
        lock (_gate)
        {
            _inFlight = null;
            if (!ReferenceEquals(message, Heartbeat))
                message.Sent = piece + 1;
            if (message.Copy is { } copy && message.Sent == message.Shape.Pieces && _spareCopies.Count < SpareCopies)
                _spareCopies.Push(copy);
            // Whoever waits for this piece, a caller writing inline, or a detach; not every waiter for every piece.
            if (piece >= message.Wanted || message.Detached || _queue.Count > 0)
                Monitor.PulseAll(_gate);
        }
        return true;
    }

    private static void Quietly(Action action)
    {
        try
        {
            action();
        }
        catch (Exception)
        {
            // the peer may already be gone; leaving does not need its answer
        }
    }
}
