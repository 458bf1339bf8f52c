using System.Text;
using FlmCluster.Training.Parallel;
using static TorchSharp.torch;

namespace FlmCluster.Grains.DataPlane.Sockets;

/// <summary>
/// <see cref="ICollectives"/> over the socket data plane. Every tensor travels in pieces (64 KiB to 1 MiB, see
/// <see cref="MessageShape"/>), read from and written into the tensor's own memory, so sending one piece,
/// reducing the next and receiving a third overlap.
/// <para>
/// Reductions keep member order — member m adds its tensor to the partial sum of members 0 … m−1 — so results
/// are bit-identical to the in-process and Orleans collectives, which sum ((x0 + x1) + x2) + … A ring that
/// starts each chunk's sum at a different member would round differently, so the sum runs as a pipelined chain
/// through the members in order: partial sums flow forward (0 → 1 → … → n−1), the result flows back. A group
/// whose members sit on two servers in runs (as layouts place them) crosses between the servers once each way:
/// the chain reduces inside the first server, crosses, and continues inside the next.
/// </para>
/// <para>
/// Collectives without arithmetic use the ring: an all-gather passes each member's chunk around it; a broadcast
/// passes the root's tensor along it. Point-to-point messages (pipeline activations and gradients) go straight
/// to the peer: up to <see cref="LinkSender.InlineBytes"/> written by the caller from the tensor (the peer's
/// receiver always takes that much, asked for or not), larger ones copied out once and sent in the background,
/// so two pipeline stages that both send before they receive never wait for each other. A failure of any link
/// fails the whole session (see <see cref="SocketSession"/>).
/// </para>
/// </summary>
public sealed unsafe class SocketCollectives(int rank, SocketSession session) : CollectivesBase(rank)
{
    private readonly Dictionary<string, long> _sequence = [];

    protected override void AllReduceRaw(ProcessGroup group, int index, RawBuffer data, ScalarType type, ReduceOp op)
    {
        var tag = NextTag("all-reduce", group);
        Run($"all-reduce on {group.Name}", o => ChainReduce(o, group, index, data, type, op, tag));
    }

    protected override void BarrierRaw(ProcessGroup group, int index)
    {
        var tag = NextTag("barrier", group);
        Run($"barrier on {group.Name}", o => ChainReduce(o, group, index, new RawBuffer(null, 0), ScalarType.Float32, ReduceOp.Sum, tag));
    }

    /// <summary>Sums in member order along the chain, then passes the result back along it.</summary>
    private static void ChainReduce(Op o, ProcessGroup group, int index, RawBuffer data, ScalarType type, ReduceOp op, uint tag)
    {
        var n = group.Size;
        var shape = MessageShape.Whole(data.Length);
        var prev = index > 0 ? o.Link(group.Ranks[index - 1]) : null;
        var next = index < n - 1 ? o.Link(group.Ranks[index + 1]) : null;
        var partials = prev is null ? null : o.Receive(prev, tag, shape, null);
        var results = next is null ? null : o.Receive(next, tag, shape, data);
        var up = next is null ? null : o.Send(next, tag, shape);
        var down = prev is null ? null : o.Send(prev, tag, shape);
        var forwarded = 0;
        void Forward(int k)
        {
            var piece = Piece(data, shape, k);
            CopyIfElsewhere(results!.Wait(k), piece);
            down?.Queue(k, piece);
        }
        for (var k = 0; k < shape.Pieces; k++)
        {
            var piece = Piece(data, shape, k);
            if (partials is not null)
            {
                // x + p equals p + x bit for bit (IEEE addition and maximum are commutative), so this member's
                // tensor can take the sum in place and the order stays (…(x0 + x1) + …) + xm.
                Reduction.Accumulate(piece.Span, partials.Wait(k).Span, type, op);
                partials.Release(k);
            }
            if (up is not null)
                up.Queue(k, piece);
            else
                down!.Queue(k, piece); // the last member holds the result
            while (results is not null && forwarded < k && results.HasArrived(forwarded))
                Forward(forwarded++);
        }
        while (results is not null && forwarded < shape.Pieces)
            Forward(forwarded++);
    }

    protected override void ReduceScatterRaw(ProcessGroup group, int index, RawBuffer input, RawBuffer output, ScalarType type)
    {
        var tag = NextTag("reduce-scatter", group);
        Run($"reduce-scatter on {group.Name}", o =>
        {
            // The chain of partial sums runs over the whole input with chunk-aligned pieces; the last member sends
            // each finished chunk to its owner. The input is never written: partial sums live in the window.
            var n = group.Size;
            var chunk = output.Length;
            if (chunk == 0)
                return;
            var shape = MessageShape.For(input.Length, chunk);
            var chunkShape = MessageShape.Whole(chunk) with { Piece = shape.Piece }; // the chain's pieces, forwarded as they are
            var last = index == n - 1;
            var prev = index > 0 ? o.Link(group.Ranks[index - 1]) : null;
            var next = last ? null : o.Link(group.Ranks[index + 1]);
            var partials = prev is null ? null : o.Receive(prev, tag, shape, null);
            var mine = last ? null : o.Receive(o.Link(group.Ranks[n - 1]), tag, chunkShape, output);
            var up = next is null ? null : o.Send(next, tag, shape);
            var owners = last ? Enumerable.Range(0, n - 1).Select(j => o.Send(o.Link(group.Ranks[j]), tag, chunkShape)).ToArray() : null;
            // Window slots in order, each released once its partial sum has left (at once when it stays here).
            var leaving = new Queue<(int Piece, Outbound? Message, int AsPiece)>();
            for (var k = 0; k < shape.Pieces; k++)
            {
                var x = Piece(input, shape, k);
                if (partials is null)
                {
                    up!.Queue(k, x);
                    continue;
                }
                while (leaving.Count > 0 && (leaving.Peek().Message?.IsSent(leaving.Peek().AsPiece) != false || leaving.Count >= Inbox.WindowPieces - 1))
                {
                    var (piece, message, asPiece) = leaving.Dequeue();
                    message?.WaitSent(asPiece);
                    partials.Release(piece);
                }
                var sum = partials.Wait(k);
                Reduction.Accumulate(sum.Span, x.Span, type, ReduceOp.Sum); // p + x: member order as written
                var offset = shape.Offset(k);
                var (owner, q) = (offset / chunk, offset % chunk / shape.Piece);
                if (!last)
                {
                    up!.Queue(k, sum);
                    leaving.Enqueue((k, up, k));
                }
                else if (owner == index)
                {
                    sum.Span.CopyTo(Piece(output, chunkShape, q).Span);
                    leaving.Enqueue((k, null, 0));
                }
                else
                {
                    owners![owner].Queue(q, sum);
                    leaving.Enqueue((k, owners[owner], q));
                }
            }
            if (mine is not null)
                for (var q = 0; q < chunkShape.Pieces; q++)
                    CopyIfElsewhere(mine.Wait(q), Piece(output, chunkShape, q));
        });
    }

    protected override void AllGatherRaw(ProcessGroup group, int index, RawBuffer input, RawBuffer output)
    {
        var tag = NextTag("all-gather", group);
        Run($"all-gather on {group.Name}", o =>
        {
            // Ring: this member sends its chunk to the next, then passes on each chunk that arrives from the
            // previous one (n − 2 of them); every chunk lands straight in its place in the output.
            var n = group.Size;
            var chunk = input.Length;
            var shape = MessageShape.Whole(chunk);
            RawBuffer Slot(int member) => new(output.Pointer + (long)member * chunk, chunk);
            if (!input.SameAs(Slot(index)))
                input.Span.CopyTo(Slot(index).Span);
            var next = o.Link(group.Ranks[(index + 1) % n]);
            var prev = o.Link(group.Ranks[(index + n - 1) % n]);
            var arriving = Enumerable.Range(1, n - 1).Select(s => (Member: (index - s + n) % n, In: o.Receive(prev, tag, shape, Slot((index - s + n) % n)))).ToList();
            var own = o.Send(next, tag, shape);
            for (var k = 0; k < shape.Pieces; k++)
                own.Queue(k, Piece(Slot(index), shape, k));
            for (var s = 0; s < n - 1; s++)
            {
                var onward = s < n - 2 ? o.Send(next, tag, shape) : null;
                var (member, incoming) = arriving[s];
                for (var k = 0; k < shape.Pieces; k++)
                {
                    var piece = Piece(Slot(member), shape, k);
                    CopyIfElsewhere(incoming.Wait(k), piece);
                    onward?.Queue(k, piece);
                }
            }
        });
    }

    protected override void BroadcastRaw(ProcessGroup group, int index, RawBuffer data, int root)
    {
        var tag = NextTag("broadcast", group);
        Run($"broadcast on {group.Name}", o =>
        {
            // Along the ring from the root, each member passing each piece on as it lands.
            var n = group.Size;
            var position = (index - root + n) % n;
            var shape = MessageShape.Whole(data.Length);
            var incoming = position > 0 ? o.Receive(o.Link(group.Ranks[(index + n - 1) % n]), tag, shape, data) : null;
            var onward = position < n - 1 ? o.Send(o.Link(group.Ranks[(index + 1) % n]), tag, shape) : null;
            for (var k = 0; k < shape.Pieces; k++)
            {
                var piece = Piece(data, shape, k);
                if (incoming is not null)
                    CopyIfElsewhere(incoming.Wait(k), piece);
                onward?.Queue(k, piece);
            }
        });
    }

    protected override void SendRaw(RawBuffer data, int destinationRank, int tag) =>
        Run($"send to rank {destinationRank} (tag {tag})", o =>
        {
            var link = o.Link(destinationRank);
            var shape = MessageShape.Direct(data.Length);
            if (data.Length > LinkSender.InlineBytes)
            {
                link.Sender.SendCopy(PointToPointTag(tag), shape, data); // copied out, sent while the caller goes on
                return;
            }
            // Written by this thread straight from the tensor when the link is idle (the op waits until it has left).
            var message = o.Send(link, PointToPointTag(tag), shape, inline: true);
            for (var k = 0; k < shape.Pieces; k++)
                message.Queue(k, Piece(data, shape, k));
        });

    protected override void RecvRaw(RawBuffer data, int sourceRank, int tag) =>
        Run($"receive from rank {sourceRank} (tag {tag})", o =>
        {
            var shape = MessageShape.Direct(data.Length);
            var incoming = o.Receive(o.Link(sourceRank), PointToPointTag(tag), shape, data);
            incoming.Wait(shape.Pieces - 1); // pieces land in order: once the last is here, all are
            for (var k = 0; k < shape.Pieces; k++)
                CopyIfElsewhere(incoming.Wait(k), Piece(data, shape, k));
        });

    /// <summary>Runs one collective; any failure fails the session (peers stop waiting for this rank) and is rethrown.</summary>
    private void Run(string what, Action<Op> body)
    {
        var op = new Op(session, $"rank {Rank}: {what}");
        try
        {
            body(op);
            op.Complete();
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            session.Fail(ex switch
            {
                CollectiveAbortedException => LinkFailure.Aborted(ex.Message),
                CollectiveTimeoutException => LinkFailure.Lost(ex.Message),
                _ => LinkFailure.Schedule($"rank {Rank}: {what} failed: {ex.Message}"),
            });
            throw;
        }
        finally
        {
            op.Dispose();
        }
    }

    /// <summary>A tag both ends compute alike for the next collective of a group (the schedule check of the inbox).</summary>
    private uint NextTag(string op, ProcessGroup group)
    {
        var seq = _sequence.TryGetValue(group.Name, out var s) ? s : 0;
        _sequence[group.Name] = seq + 1;
        var hash = 2166136261u;
        foreach (var b in Encoding.UTF8.GetBytes($"{op}:{group.Name}:{seq}"))
            hash = (hash ^ b) * 16777619u;
        return hash & 0x7FFF_FFFFu;
    }

    private static uint PointToPointTag(int tag) => 0x8000_0000u | ((uint)tag & 0x7FFF_FFFFu);

    private static RawBuffer Piece(RawBuffer data, MessageShape shape, int piece) =>
        new(data.Pointer + shape.Offset(piece), shape.Size(piece));

    /// <summary>Pieces land in place unless their message arrived before it was asked for; then they are copied once.</summary>
    private static void CopyIfElsewhere(RawBuffer landed, RawBuffer place)
    {
        if (landed.Pointer != place.Pointer)
            landed.Span.CopyTo(place.Span);
    }

    /// <summary>The receives and sends of one collective: on the way out, every send has left and nothing touches the tensor's memory any more.</summary>
    private sealed class Op(SocketSession session, string what)
    {
        private readonly List<Incoming> _receives = [];
        private readonly List<Outbound> _sends = [];

        public PeerLink Link(int rank) => session.Link(rank);

        public Incoming Receive(PeerLink link, uint tag, MessageShape shape, RawBuffer? into)
        {
            var incoming = new Incoming(link.Inbox, link.Inbox.Post(tag, shape, into), what, session.Timeout);
            _receives.Add(incoming);
            return incoming;
        }

        public Outbound Send(PeerLink link, uint tag, MessageShape shape, bool inline = false)
        {
            var outbound = new Outbound(link.Sender, link.Sender.Begin(tag, shape, inline), what, session.Timeout);
            _sends.Add(outbound);
            return outbound;
        }

        public void Complete()
        {
            foreach (var send in _sends)
                send.WaitAll();
        }

        public void Dispose()
        {
            foreach (var send in _sends)
                send.Detach();
            foreach (var receive in _receives)
                receive.Finish();
        }
    }

    private sealed class Incoming(Inbox inbox, Receive receive, string what, TimeSpan timeout)
    {
        public RawBuffer Wait(int piece) => inbox.Wait(receive, piece, timeout, what);
        public bool HasArrived(int piece) => Inbox.HasArrived(receive, piece);
        public void Release(int piece) => inbox.Release(receive, piece);
        public void Finish() => inbox.Finish(receive);
    }

    private sealed class Outbound(LinkSender sender, Outgoing message, string what, TimeSpan timeout)
    {
        public void Queue(int piece, RawBuffer data) => sender.Queue(message, piece, data);
        public bool IsSent(int piece) => LinkSender.IsSent(message, piece);
        public void WaitSent(int piece) => sender.WaitSent(message, piece, timeout, what);
        public void WaitAll() => WaitSent(message.Shape.Pieces - 1);
        public void Detach() => sender.Detach(message);
    }
}
