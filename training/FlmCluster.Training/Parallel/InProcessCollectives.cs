using System.Buffers;
using System.Collections.Concurrent;
using static TorchSharp.torch;

namespace FlmCluster.Training.Parallel;

/// <summary>
/// The shared memory of ranks that run as threads of one process (like the GPUs of one server over
/// NVLink). Each collective is a rendezvous: members publish their buffers, each member reduces or copies
/// its own 1/n of the data directly between the peers' buffers, and a second barrier ends the operation.
/// Any failure aborts every waiting rank instead of leaving them blocked.
/// </summary>
public sealed class InProcessFabric : IDisposable
{
    private readonly ConcurrentDictionary<string, Rendezvous> _groups = new();
    private readonly ConcurrentDictionary<(int From, int To), BlockingCollection<(int Tag, byte[] Data)>> _mailboxes = new();
    private readonly CancellationTokenSource _abort = new();
    private Exception? _abortReason;

    public int WorldSize { get; }

    /// <summary>How long a rank waits for its peers before the whole fabric is aborted.</summary>
    public TimeSpan Timeout { get; }

    public InProcessFabric(int worldSize, TimeSpan? timeout = null)
    {
        WorldSize = worldSize;
        Timeout = timeout ?? TimeSpan.FromMinutes(10);
    }

    public ICollectives ForRank(int rank)
    {
        if (rank < 0 || rank >= WorldSize)
            throw new ArgumentOutOfRangeException(nameof(rank));
        return new InProcessCollectives(this, rank);
    }

    public bool IsAborted => _abort.IsCancellationRequested;

    /// <summary>Wakes every rank blocked in a collective with an error; used when any rank fails.</summary>
    public void Abort(Exception reason)
    {
        Interlocked.CompareExchange(ref _abortReason, reason, null);
        _abort.Cancel();
    }

    internal CancellationToken Token => _abort.Token;

    internal Rendezvous Group(ProcessGroup group)
    {
        var r = _groups.GetOrAdd(group.Name, _ => new Rendezvous(group));
        if (!r.Ranks.SequenceEqual(group.Ranks))
            throw new InvalidOperationException($"group name {group.Name} reused for different ranks");
        return r;
    }

    internal BlockingCollection<(int Tag, byte[] Data)> Mailbox(int from, int to) =>
        _mailboxes.GetOrAdd((from, to), _ => new BlockingCollection<(int, byte[])>());

    internal Exception Failure(string what) =>
        _abortReason is { } reason
            ? new CollectiveAbortedException($"{what} aborted: another rank failed ({reason.Message})", reason)
            : new CollectiveAbortedException($"{what} aborted");

    public void Dispose()
    {
        _abort.Cancel();
        foreach (var group in _groups.Values)
            group.Barrier.Dispose();
        foreach (var box in _mailboxes.Values)
            box.Dispose();
        _abort.Dispose();
    }

    internal sealed unsafe class Rendezvous(ProcessGroup group)
    {
        public IReadOnlyList<int> Ranks { get; } = group.Ranks;
        public Barrier Barrier { get; } = new(group.Size);
        public readonly RawBuffer[] Inputs = new RawBuffer[group.Size];
        public readonly RawBuffer[] Outputs = new RawBuffer[group.Size];
    }
}

/// <summary>One rank's view of an <see cref="InProcessFabric"/>.</summary>
internal sealed unsafe class InProcessCollectives(InProcessFabric fabric, int rank) : CollectivesBase(rank)
{
    protected override void AllReduceRaw(ProcessGroup group, int index, RawBuffer data, ScalarType type, ReduceOp op)
    {
        var r = fabric.Group(group);
        r.Inputs[index] = data;
        Wait(r, group, "all-reduce");
        CheckLengths(r, data.Length, group, "all-reduce");
        // This member reduces elements [lo, hi) of every buffer, in member order, then writes the result to all.
        var (lo, hi) = Chunk(data.Length, Reduction.ElementSize(type), group.Size, index);
        if (hi > lo)
        {
            var scratch = ArrayPool<byte>.Shared.Rent(hi - lo);
            try
            {
                var acc = scratch.AsSpan(0, hi - lo);
                r.Inputs[0].Span[lo..hi].CopyTo(acc);
                for (var m = 1; m < group.Size; m++)
                    Reduction.Accumulate(acc, r.Inputs[m].Span[lo..hi], type, op);
                for (var m = 0; m < group.Size; m++)
                    acc.CopyTo(r.Inputs[m].Span[lo..hi]);
            }
            finally
            {
                ArrayPool<byte>.Shared.Return(scratch);
            }
        }
        Wait(r, group, "all-reduce");
    }

    protected override void ReduceScatterRaw(ProcessGroup group, int index, RawBuffer input, RawBuffer output, ScalarType type)
    {
        var r = fabric.Group(group);
        r.Inputs[index] = input;
        Wait(r, group, "reduce-scatter");
        CheckLengths(r, input.Length, group, "reduce-scatter");
        var chunk = output.Length;
        var lo = index * chunk;
        var scratch = ArrayPool<byte>.Shared.Rent(chunk);
        try
        {
            // Accumulate in scratch: the output may be this member's own chunk of its input.
            var acc = scratch.AsSpan(0, chunk);
            r.Inputs[0].Span.Slice(lo, chunk).CopyTo(acc);
            for (var m = 1; m < group.Size; m++)
                Reduction.Accumulate(acc, r.Inputs[m].Span.Slice(lo, chunk), type, ReduceOp.Sum);
            acc.CopyTo(output.Span);
        }
        finally
        {
            ArrayPool<byte>.Shared.Return(scratch);
        }
        Wait(r, group, "reduce-scatter");
    }

    protected override void AllGatherRaw(ProcessGroup group, int index, RawBuffer input, RawBuffer output)
    {
        var r = fabric.Group(group);
        r.Inputs[index] = input;
        Wait(r, group, "all-gather");
        CheckLengths(r, input.Length, group, "all-gather");
        var chunk = input.Length;
        for (var m = 0; m < group.Size; m++)
        {
            var destination = new RawBuffer(output.Pointer + (long)m * chunk, chunk);
            if (!destination.SameAs(r.Inputs[m]))
                r.Inputs[m].Span.CopyTo(destination.Span);
        }
        Wait(r, group, "all-gather");
    }

    protected override void BroadcastRaw(ProcessGroup group, int index, RawBuffer data, int root)
    {
        var r = fabric.Group(group);
        r.Inputs[index] = data;
        Wait(r, group, "broadcast");
        CheckLengths(r, data.Length, group, "broadcast");
        if (index != root)
            r.Inputs[root].Span.CopyTo(data.Span);
        Wait(r, group, "broadcast");
    }

    protected override void SendRaw(RawBuffer data, int destinationRank, int tag)
    {
        var copy = data.Span.ToArray();
        fabric.Mailbox(Rank, destinationRank).Add((tag, copy), fabric.Token);
    }

    protected override void RecvRaw(RawBuffer data, int sourceRank, int tag)
    {
        (int Tag, byte[] Data) message;
        try
        {
            if (!fabric.Mailbox(sourceRank, Rank).TryTake(out message, (int)fabric.Timeout.TotalMilliseconds, fabric.Token))
                throw Timeout($"receive from rank {sourceRank} (tag {tag})");
        }
        catch (OperationCanceledException)
        {
            throw fabric.Failure($"rank {Rank}: receive from rank {sourceRank}");
        }
        if (message.Tag != tag)
            throw new InvalidOperationException($"rank {Rank} expected tag {tag} from rank {sourceRank} but got {message.Tag}: the ranks disagree on the schedule");
        if (message.Data.Length != data.Length)
            throw new InvalidOperationException($"rank {Rank} expected {data.Length} bytes from rank {sourceRank} (tag {tag}) but got {message.Data.Length}");
        message.Data.CopyTo(data.Span);
    }

    protected override void BarrierRaw(ProcessGroup group, int index) => Wait(fabric.Group(group), group, "barrier");

    private void Wait(InProcessFabric.Rendezvous r, ProcessGroup group, string what)
    {
        bool arrived;
        try
        {
            arrived = r.Barrier.SignalAndWait(fabric.Timeout, fabric.Token);
        }
        catch (OperationCanceledException)
        {
            throw fabric.Failure($"rank {Rank}: {what} on {group.Name}");
        }
        if (!arrived)
            throw Timeout($"{what} on {group}");
    }

    private Exception Timeout(string what)
    {
        var ex = new CollectiveTimeoutException($"rank {Rank}: {what} waited more than {fabric.Timeout.TotalSeconds:0}s for its peers");
        fabric.Abort(ex);
        return ex;
    }

    private static void CheckLengths(InProcessFabric.Rendezvous r, int length, ProcessGroup group, string what)
    {
        foreach (var input in r.Inputs)
            if (input.Length != length)
                throw new InvalidOperationException($"{what} on {group.Name}: members passed {input.Length} and {length} bytes");
    }

    private static (int Lo, int Hi) Chunk(int bytes, int elementSize, int parts, int index)
    {
        var elements = bytes / elementSize;
        var lo = (int)((long)elements * index / parts) * elementSize;
        var hi = (int)((long)elements * (index + 1) / parts) * elementSize;
        return (lo, hi);
    }
}
