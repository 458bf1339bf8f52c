using System.Diagnostics;
using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Grains.DataPlane.Sockets;

/// <summary>
/// One message on its way in: where its pieces land and how far it has arrived. The consumer posts it with a
/// destination (pieces go straight into the tensor) or without (pieces go through a small window of slots the
/// consumer releases as it reduces them). A message that arrives before its receive is posted is kept whole
/// in an early buffer, within the inbox's limit.
/// </summary>
internal sealed unsafe class Receive(uint tag, MessageShape shape)
{
    public uint Tag { get; } = tag;
    public MessageShape Shape { get; } = shape;

    public RawBuffer? Destination;
    public byte[]? Window;
    public int SlotBytes;
    public int Slots;
    public byte[]? Early;

    /// <summary>Pieces that have landed (they arrive in order).</summary>
    public volatile int Arrived;

    /// <summary>Window slots the consumer gave back: piece k may land once k − Released &lt; Slots.</summary>
    public int Released;

    /// <summary>The piece the consumer waits for: the producer wakes it only when that one has landed.</summary>
    public int Wanted = int.MaxValue;

    /// <summary>Producers writing into this message's memory right now.</summary>
    public int Writers;

    /// <summary>The consumer is done with it: nothing may be written into its memory any more.</summary>
    public bool Detached;

    public RawBuffer Location(int piece)
    {
        var size = Shape.Size(piece);
        if (Early is not null)
            return new RawBuffer(Pin(Early) + Shape.Offset(piece), size);
        if (Destination is { } destination)
            return new RawBuffer(destination.Pointer + Shape.Offset(piece), size);
        return new RawBuffer(Pin(Window!) + (long)(piece % Slots) * SlotBytes, size);
    }

    public static byte* Pin(byte[] pinned) => (byte*)Unsafe.AsPointer(ref MemoryMarshal.GetArrayDataReference(pinned));
}

/// <summary>
/// The messages one peer sends to this rank, in order. The consumer (the rank's device thread) posts receives in
/// the order the peer sends; the producer (the connection's reader thread, or a peer's sender on the same silo)
/// matches each message it begins with the oldest posted receive, or keeps it early when none is posted yet.
/// A peer can make this inbox hold at most <see cref="EarlyLimit"/> bytes of messages nobody asked for yet;
/// beyond that the producer waits, and TCP pushes back on the peer.
/// </summary>
internal sealed unsafe class Inbox(string peer, long earlyLimit)
{
    /// <summary>Window slots of a receive without a destination: pieces in flight while the consumer reduces.</summary>
    public const int WindowPieces = 8;

    private readonly object _gate = new();
    private readonly Queue<Receive> _posted = new();
    private readonly Queue<Receive> _early = new();
    private readonly byte[] _discard = GC.AllocateUninitializedArray<byte>(MessageShape.MaxPieceBytes, pinned: true);
    private byte[]? _spareWindow;
    private long _earlyBytes;
    private LinkFailure? _failure;

    public long EarlyLimit { get; } = earlyLimit;

    public LinkFailure? Failure
    {
        get
        {
            lock (_gate)
                return _failure;
        }
    }

    // ---- the consumer: the rank's device thread ----

    /// <summary>Posts the next receive from this peer: into <paramref name="destination"/>, or through a window when null.</summary>
    public Receive Post(uint tag, MessageShape shape, RawBuffer? destination)
    {
        if (destination is { } d && d.Length != shape.Length)
            throw new ArgumentException($"a receive of {shape.Length} bytes into {d.Length}");
        lock (_gate)
        {
            // A message that came before the link failed (the peer sent its last one and left) is still read.
            if (_early.TryDequeue(out var early))
            {
                Match(tag, shape, early.Tag, early.Shape);
                early.Destination = destination;
                return early;
            }
            ThrowIfFailed();
            var r = new Receive(tag, shape) { Destination = destination };
            if (destination is null)
            {
                r.SlotBytes = shape.Pieces == 1 ? shape.Size(0) : shape.Piece;
                r.Slots = Math.Min(WindowPieces, shape.Pieces);
                var bytes = Math.Max(1, r.SlotBytes * r.Slots);
                r.Window = _spareWindow is { } spare && spare.Length >= bytes ? spare : GC.AllocateUninitializedArray<byte>(bytes, pinned: true);
                if (ReferenceEquals(r.Window, _spareWindow))
                    _spareWindow = null;
            }
            _posted.Enqueue(r);
            Monitor.PulseAll(_gate);
            return r;
        }
    }

    /// <summary>Waits until piece <paramref name="piece"/> has landed and returns where it is.</summary>
    public RawBuffer Wait(Receive r, int piece, TimeSpan timeout, string what)
    {
        if (r.Arrived > piece)
            return r.Location(piece);
        var start = Stopwatch.GetTimestamp();
        lock (_gate)
        {
            r.Wanted = piece;
            while (r.Arrived <= piece)
            {
                ThrowIfFailed();
                var left = timeout - Stopwatch.GetElapsedTime(start);
                if (left <= TimeSpan.Zero)
                    throw new CollectiveTimeoutException($"{what} waited more than {timeout.TotalSeconds:0}s for {peer}");
                Monitor.Wait(_gate, left);
            }
            r.Wanted = int.MaxValue;
        }
        return r.Location(piece);
    }

    public static bool HasArrived(Receive r, int piece) => r.Arrived > piece;

    /// <summary>The window slot of <paramref name="piece"/> may take a later piece (release in order).</summary>
    public void Release(Receive r, int piece)
    {
        if (r.Window is null)
            return;
        lock (_gate)
        {
            r.Released = Math.Max(r.Released, piece + 1);
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>The consumer is done with the receive (whole or not): once this returns no producer writes into its memory.</summary>
    public void Finish(Receive r)
    {
        lock (_gate)
        {
            r.Detached = true;
            while (r.Writers > 0)
                Monitor.Wait(_gate);
            if (r.Early is not null)
            {
                _earlyBytes -= r.Shape.Length;
                r.Early = null;
            }
            if (r.Window is { } window && (_spareWindow is null || window.Length > _spareWindow.Length))
                _spareWindow = window;
            r.Window = null;
            Monitor.PulseAll(_gate);
        }
    }

    // ---- the producer: a connection's reader thread, or a sender on the same silo ----

    /// <summary>Starts the next message from the peer: the oldest posted receive, or an early one (waits while over the limit).</summary>
    public Receive Begin(uint tag, MessageShape shape)
    {
        lock (_gate)
        {
            while (true)
            {
                ThrowIfFailed();
                if (_posted.TryDequeue(out var r))
                {
                    Match(r.Tag, r.Shape, tag, shape);
                    return r;
                }
                if (_earlyBytes + shape.Length <= EarlyLimit)
                {
                    var early = new Receive(tag, shape) { Early = GC.AllocateUninitializedArray<byte>(Math.Max(1, shape.Length), pinned: true) };
                    _earlyBytes += shape.Length;
                    _early.Enqueue(early);
                    return early;
                }
                Monitor.Wait(_gate);
            }
        }
    }

    /// <summary>Where piece <paramref name="piece"/> goes (waits for a free window slot); pair with <see cref="Commit"/>.</summary>
    public RawBuffer Target(Receive r, int piece)
    {
        lock (_gate)
        {
            while (true)
            {
                ThrowIfFailed();
                if (r.Detached)
                    return new RawBuffer(Receive.Pin(_discard), r.Shape.Size(piece));
                if (r.Window is null || piece - r.Released < r.Slots)
                    break;
                Monitor.Wait(_gate);
            }
            r.Writers++;
            return r.Location(piece);
        }
    }

    public void Commit(Receive r, int piece, RawBuffer target)
    {
        if (target.Pointer == Receive.Pin(_discard))
            return;
        lock (_gate)
        {
            r.Writers--;
            if (!r.Detached)
                r.Arrived = piece + 1;
            if (piece >= r.Wanted || r.Detached)
                Monitor.PulseAll(_gate);
        }
    }

    /// <summary>A piece whose bytes never came whole: the producer lets go of its memory without marking it arrived.</summary>
    public void Abandon(Receive r, RawBuffer target)
    {
        if (target.Pointer == Receive.Pin(_discard))
            return;
        lock (_gate)
        {
            r.Writers--;
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>Fails every wait on this inbox, now and later, with the first failure given.</summary>
    public void Fail(LinkFailure failure)
    {
        lock (_gate)
        {
            _failure ??= failure;
            Monitor.PulseAll(_gate);
        }
    }

    private void ThrowIfFailed()
    {
        if (_failure is { } f)
            throw f.ToException();
    }

    private void Match(uint expectedTag, MessageShape expected, uint sentTag, MessageShape sent)
    {
        if (expectedTag == sentTag && expected == sent)
            return;
        _failure ??= LinkFailure.Schedule($"this rank expects a message (tag {expectedTag:x8}, {expected.Length} bytes) from {peer}, which sent another (tag {sentTag:x8}, {sent.Length} bytes): the ranks disagree on the schedule");
        Monitor.PulseAll(_gate);
        throw _failure.ToException();
    }
}
