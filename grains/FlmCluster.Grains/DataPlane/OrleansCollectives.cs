using System.Buffers;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Parallel;
using static TorchSharp.torch;

namespace FlmCluster.Grains.DataPlane;

/// <summary>
/// <see cref="ICollectives"/> for workers that are grains. Every collective is built from tensor messages:
/// to a worker on the same silo the bytes go straight into its mailbox, to a worker on another silo they go
/// in chunks of at most <see cref="TensorChunk.MaxBytes"/> by grain calls. All-reduce is a direct
/// reduce-scatter (member j sums chunk j of every member, in member order) followed by an all-gather, so the
/// results are bit-identical on every member and equal to the in-process implementation.
/// </summary>
public sealed class OrleansCollectives : CollectivesBase
{
    private readonly string _jobId;
    private readonly int _incarnation;
    private readonly IReadOnlyList<string> _rankWorkers;
    private readonly WorkerMailbox _mailbox;
    private readonly LocalWorkers _local;
    private readonly IGrainFactory _grains;
    private readonly TimeSpan _timeout;
    private readonly Dictionary<string, long> _sequence = [];
    private readonly Dictionary<(int Peer, int Tag, bool Sending), long> _p2p = [];

    public OrleansCollectives(string jobId, int incarnation, int rank, IReadOnlyList<string> rankWorkers, WorkerMailbox mailbox,
        LocalWorkers local, IGrainFactory grains, TimeSpan timeout) : base(rank)
    {
        _jobId = jobId;
        _incarnation = incarnation;
        _rankWorkers = rankWorkers;
        _mailbox = mailbox;
        _local = local;
        _grains = grains;
        _timeout = timeout;
    }

    private string NextKey(string op, ProcessGroup group)
    {
        var seq = _sequence.TryGetValue(group.Name, out var s) ? s : 0;
        _sequence[group.Name] = seq + 1;
        return $"{op}:{group.Name}:{seq}";
    }

    protected override void AllReduceRaw(ProcessGroup group, int index, RawBuffer data, ScalarType type, ReduceOp op)
    {
        var key = NextKey("ar", group);
        var n = group.Size;
        var element = Reduction.ElementSize(type);
        var bounds = Enumerable.Range(0, n + 1).Select(j => (int)((long)(data.Length / element) * j / n) * element).ToArray();
        // Phase 1: send chunk j to member j; sum the received pieces of this member's chunk in member order.
        SendAll(group, index, j => Slice(data, bounds[j], bounds[j + 1]), $"{key}:s");
        var mine = Slice(data, bounds[index], bounds[index + 1]);
        var received = ReceiveAll(group, index, $"{key}:s", bounds[index + 1] - bounds[index]);
        var acc = (index == 0 ? mine : received[0]!).ToArray();
        for (var m = 1; m < n; m++)
            Reduction.Accumulate(acc, m == index ? mine : received[m]!, type, op);
        acc.CopyTo(data.Span[bounds[index]..bounds[index + 1]]);
        // Phase 2: everyone's reduced chunk to everyone.
        SendAll(group, index, _ => acc, $"{key}:g");
        var gathered = ReceiveAll(group, index, $"{key}:g", -1);
        for (var m = 0; m < n; m++)
            if (m != index)
            {
                if (gathered[m]!.Length != bounds[m + 1] - bounds[m])
                    throw new InvalidOperationException($"all-reduce on {group.Name}: member {m} sent {gathered[m]!.Length} bytes for a chunk of {bounds[m + 1] - bounds[m]}");
                gathered[m]!.CopyTo(data.Span[bounds[m]..bounds[m + 1]]);
            }
    }

    protected override void ReduceScatterRaw(ProcessGroup group, int index, RawBuffer input, RawBuffer output, ScalarType type)
    {
        var key = NextKey("rs", group);
        var chunk = output.Length;
        SendAll(group, index, j => Slice(input, j * chunk, (j + 1) * chunk), key);
        var mine = Slice(input, index * chunk, (index + 1) * chunk).ToArray();
        var received = ReceiveAll(group, index, key, chunk);
        var acc = (index == 0 ? mine : received[0]!).ToArray();
        for (var m = 1; m < group.Size; m++)
            Reduction.Accumulate(acc, m == index ? mine : received[m]!, type, ReduceOp.Sum);
        acc.CopyTo(output.Span);
    }

    protected override void AllGatherRaw(ProcessGroup group, int index, RawBuffer input, RawBuffer output)
    {
        var key = NextKey("ag", group);
        var chunk = input.Length;
        var own = input.Span.ToArray();
        SendAll(group, index, _ => own, key);
        var received = ReceiveAll(group, index, key, chunk);
        for (var m = 0; m < group.Size; m++)
            (m == index ? own : received[m]!).CopyTo(output.Span.Slice(m * chunk, chunk));
    }

    protected override void BroadcastRaw(ProcessGroup group, int index, RawBuffer data, int root)
    {
        var key = NextKey("bc", group);
        if (index == root)
        {
            var bytes = data.Span.ToArray();
            Task.WaitAll(group.Ranks.Where((_, m) => m != root).Select(r => SendAsync(r, key, bytes)).ToArray());
        }
        else
        {
            var bytes = Take(key, group.Ranks[root]);
            Check(bytes.Length, data.Length, key);
            bytes.CopyTo(data.Span);
        }
    }

    protected override void SendRaw(RawBuffer data, int destinationRank, int tag)
    {
        var count = _p2p.TryGetValue((destinationRank, tag, true), out var c) ? c : 0;
        _p2p[(destinationRank, tag, true)] = count + 1;
        SendAsync(destinationRank, $"p2p:{tag}:{count}", data.Span.ToArray()).GetAwaiter().GetResult();
    }

    protected override void RecvRaw(RawBuffer data, int sourceRank, int tag)
    {
        var count = _p2p.TryGetValue((sourceRank, tag, false), out var c) ? c : 0;
        _p2p[(sourceRank, tag, false)] = count + 1;
        var bytes = Take($"p2p:{tag}:{count}", sourceRank);
        Check(bytes.Length, data.Length, $"p2p tag {tag} from rank {sourceRank}");
        bytes.CopyTo(data.Span);
    }

    protected override void BarrierRaw(ProcessGroup group, int index)
    {
        var key = NextKey("barrier", group);
        SendAll(group, index, _ => [], key);
        ReceiveAll(group, index, key, 0);
    }

    private static byte[] Slice(RawBuffer data, int from, int to) => data.Span[from..to].ToArray();

    private void SendAll(ProcessGroup group, int index, Func<int, byte[]> payloadFor, string key)
    {
        var sends = new List<Task>();
        for (var m = 0; m < group.Size; m++)
            if (m != index)
                sends.Add(SendAsync(group.Ranks[m], $"{key}:{index}", payloadFor(m)));
        Task.WaitAll(sends.ToArray());
    }

    private byte[]?[] ReceiveAll(ProcessGroup group, int index, string key, int expectedBytes)
    {
        var result = new byte[]?[group.Size];
        for (var m = 0; m < group.Size; m++)
        {
            if (m == index)
                continue;
            result[m] = Take($"{key}:{m}", group.Ranks[m]);
            if (expectedBytes >= 0)
                Check(result[m]!.Length, expectedBytes, key);
        }
        return result;
    }

    /// <summary>Tags every message with its sender so that keys from different peers never collide.</summary>
    private byte[] Take(string key, int sourceRank) =>
        _mailbox.Take(_jobId, _incarnation, $"{sourceRank}>{key}", _timeout, $"rank {Rank}");

    private async Task SendAsync(int destinationRank, string key, byte[] bytes)
    {
        var destination = _rankWorkers[destinationRank];
        var fullKey = $"{Rank}>{key}";
        if (_local.TryGet(destination, out var mailbox))
        {
            mailbox.PutWhole(_jobId, _incarnation, fullKey, bytes);
            return;
        }
        var worker = _grains.GetGrain<IGpuWorkerGrain>(destination);
        var count = Math.Max(1, (bytes.Length + TensorChunk.MaxBytes - 1) / TensorChunk.MaxBytes);
        var sends = new Task[count];
        for (var i = 0; i < count; i++)
        {
            var start = i * TensorChunk.MaxBytes;
            var piece = bytes.AsSpan(start, Math.Min(TensorChunk.MaxBytes, bytes.Length - start)).ToArray();
            sends[i] = worker.Deliver(new TensorChunk(_jobId, _incarnation, Rank, fullKey, i, count, bytes.Length, piece));
        }
        await Task.WhenAll(sends);
    }

    private static void Check(int actual, int expected, string what)
    {
        if (actual != expected)
            throw new InvalidOperationException($"{what}: received {actual} bytes, expected {expected}");
    }
}
