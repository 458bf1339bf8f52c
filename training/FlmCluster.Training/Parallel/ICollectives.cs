using static TorchSharp.torch;

namespace FlmCluster.Training.Parallel;

public enum ReduceOp
{
    Sum,
    Max,
}

/// <summary>
/// Collective communication among the ranks of a job. Every member of a group calls the same operations
/// in the same order. Tensors travel as raw bytes; reductions run in group-rank order, so every member gets
/// bit-identical results. Operations block the calling (device) thread until complete. Implementations:
/// in-process (threads, shared memory); between silos, Orleans messages, sockets, or NCCL on GPU builds.
/// </summary>
public interface ICollectives
{
    /// <summary>This caller's global rank.</summary>
    int Rank { get; }

    /// <summary>Bytes moved and time spent (including waiting for peers) by this rank.</summary>
    CommStats Stats { get; }

    /// <summary>In place: every member ends with the reduction of all members' tensors.</summary>
    void AllReduce(ProcessGroup group, Tensor tensor, ReduceOp op = ReduceOp.Sum);

    /// <summary>
    /// <paramref name="input"/> has group.Size × output.numel() elements; member i receives the sum of chunk i.
    /// <paramref name="output"/> may be this member's own chunk of <paramref name="input"/>.
    /// </summary>
    void ReduceScatter(ProcessGroup group, Tensor input, Tensor output);

    /// <summary>
    /// Member i's <paramref name="input"/> lands in chunk i of every member's <paramref name="output"/>.
    /// <paramref name="input"/> may be this member's own chunk of <paramref name="output"/>.
    /// </summary>
    void AllGather(ProcessGroup group, Tensor input, Tensor output);

    /// <summary>Every member's tensor becomes the tensor of the member at group index <paramref name="root"/>.</summary>
    void Broadcast(ProcessGroup group, Tensor tensor, int root);

    /// <summary>Buffered point-to-point send (returns once the bytes are copied out).</summary>
    void Send(Tensor tensor, int destinationRank, int tag);

    /// <summary>Receives into <paramref name="tensor"/> the matching send (same source and tag).</summary>
    void Recv(Tensor tensor, int sourceRank, int tag);

    void Barrier(ProcessGroup group);
}

/// <summary>
/// Per-rank communication counters (not thread-safe: one device thread per rank). Point-to-point receives are
/// also counted apart: in a pipeline they are the time a stage waits for its neighbour (the bubble).
/// </summary>
public sealed class CommStats
{
    public long Bytes { get; private set; }
    public long Operations { get; private set; }
    public TimeSpan Time { get; private set; }

    /// <summary>The part of <see cref="Time"/> spent in point-to-point receives.</summary>
    public TimeSpan ReceiveTime { get; private set; }

    public void Add(long bytes, TimeSpan time, bool receive = false)
    {
        Bytes += bytes;
        Operations++;
        Time += time;
        if (receive)
            ReceiveTime += time;
    }

    public (long Bytes, TimeSpan Time) Snapshot() => (Bytes, Time);
}
