using System.Diagnostics;
using System.Runtime.InteropServices;
using System.Text;
using FlmCluster.Grains.DataPlane.Sockets;
using FlmCluster.Training.Parallel;
using static FlmCluster.Grains.DataPlane.Nccl.NcclNative;
using TorchSharp;
using static TorchSharp.torch;

namespace FlmCluster.Grains.DataPlane.Nccl;

/// <summary>
/// <see cref="ICollectives"/> over NCCL for CUDA tensors (GPU builds; untested until run on GPUs). One NCCL
/// communicator per process group, made when the group is first used: its first member creates the unique id
/// (which embeds that process's bootstrap address, so a rank must create it, not the coordinator) and sends it to
/// the other members over the job's socket session — authenticated with the assignment's session key — as NCCL
/// asks ("broadcast the id using any CPU communication system"). Collectives run on the legacy default stream,
/// so they follow torch's kernels; a call returns when the stream has finished, watched for NCCL's asynchronous
/// errors and the collective timeout, on which every communicator is aborted and the call fails as a lost peer.
/// Sends copy the tensor and go on their own stream, so two pipeline stages that both send first cannot block
/// each other. NCCL picks its own reduction order (ring or tree), so results are deterministic for a fixed
/// topology but not bit-identical to the socket and in-process planes.
/// </summary>
public sealed unsafe class NcclCollectives : ICollectives
{
    private readonly SocketCollectives _bootstrap;
    private readonly int _device;
    private readonly TimeSpan _timeout;
    private readonly Dictionary<string, nint> _comms = [];
    private readonly List<Tensor> _sending = [];
    private nint _sendStream;
    private volatile string? _abort;

    public int Rank { get; }
    public CommStats Stats { get; } = new();

    public NcclCollectives(int rank, SocketCollectives bootstrap, int device, TimeSpan timeout)
    {
        Rank = rank;
        _bootstrap = bootstrap;
        _device = device;
        _timeout = timeout;
    }

    /// <summary>Ends every communicator at once (the worker left the job): waits in progress fail as aborted.</summary>
    public void Abort(string reason)
    {
        _abort = reason;
        lock (_comms)
            foreach (var comm in _comms.Values)
                ncclCommAbort(comm);
    }

    public void AllReduce(ProcessGroup group, Tensor tensor, ReduceOp op = ReduceOp.Sum) =>
        Collective(group, tensor, $"all-reduce on {group.Name}", comm =>
            ncclAllReduce(Data(tensor), Data(tensor), Count(tensor), TypeOf(tensor), op == ReduceOp.Max ? RedOp.Max : RedOp.Sum, comm, 0));

    public void ReduceScatter(ProcessGroup group, Tensor input, Tensor output) =>
        Collective(group, input, $"reduce-scatter on {group.Name}", comm =>
            ncclReduceScatter(Data(input), Data(output), Count(output), TypeOf(input), RedOp.Sum, comm, 0));

    public void AllGather(ProcessGroup group, Tensor input, Tensor output) =>
        Collective(group, output, $"all-gather on {group.Name}", comm =>
            ncclAllGather(Data(input), Data(output), Count(input), TypeOf(input), comm, 0));

    public void Broadcast(ProcessGroup group, Tensor tensor, int root) =>
        Collective(group, tensor, $"broadcast on {group.Name}", comm =>
            ncclBroadcast(Data(tensor), Data(tensor), Count(tensor), TypeOf(tensor), root, comm, 0));

    public void Barrier(ProcessGroup group)
    {
        using var token = zeros(1, device: new Device(DeviceType.CUDA, _device));
        AllReduce(group, token);
    }

    public void Send(Tensor tensor, int destinationRank, int tag)
    {
        var pair = Pair(destinationRank);
        var copy = tensor.detach().clone(); // the caller may change its tensor at once
        Timed(tensor, () =>
        {
            Check(cudaStreamSynchronize(0), "the copy of a send"); // the copy is made before the send stream reads it
            var comm = Comm(pair);
            Check(ncclGroupStart(), "ncclGroupStart");
            Check(ncclSend(Data(copy), Count(copy), TypeOf(copy), pair.IndexOf(destinationRank), comm, SendStream()), $"send to rank {destinationRank}");
            Check(ncclGroupEnd(), "ncclGroupEnd");
        });
        ReleaseSent();
        _sending.Add(copy);
    }

    public void Recv(Tensor tensor, int sourceRank, int tag)
    {
        var pair = Pair(sourceRank);
        Collective(pair, tensor, $"receive from rank {sourceRank}", comm =>
        {
            Check(ncclGroupStart(), "ncclGroupStart");
            var result = ncclRecv(Data(tensor), Count(tensor), TypeOf(tensor), pair.IndexOf(sourceRank), comm, 0);
            Check(ncclGroupEnd(), "ncclGroupEnd");
            return result;
        });
    }

    /// <summary>A point-to-point pair's own communicator (both ranks make it on their first message).</summary>
    private ProcessGroup Pair(int peer) => new($"p2p/{Math.Min(Rank, peer)}-{Math.Max(Rank, peer)}", [Math.Min(Rank, peer), Math.Max(Rank, peer)]);

    private void Collective(ProcessGroup group, Tensor tensor, string what, Func<nint, int> launch)
    {
        if (tensor.device_type != DeviceType.CUDA || !tensor.is_contiguous())
            throw new NotSupportedException($"{what}: the nccl data plane moves contiguous CUDA tensors (got {tensor.device_type})");
        if (group.Size == 1)
            return;
        Timed(tensor, () =>
        {
            var comm = Comm(group);
            Check(launch(comm), what);
            Wait(0, comm, what);
        });
    }

    private void Timed(Tensor tensor, Action action)
    {
        var start = Stopwatch.GetTimestamp();
        action();
        Stats.Add(tensor.NumberOfElements * tensor.ElementSize, Stopwatch.GetElapsedTime(start));
    }

    /// <summary>The group's communicator: its first member makes the unique id and sends it to the others over the socket session.</summary>
    private nint Comm(ProcessGroup group)
    {
        lock (_comms)
            if (_comms.TryGetValue(group.Name, out var existing))
                return existing;
        Check(cudaSetDevice(_device), $"cudaSetDevice({_device})");
        var index = group.IndexOf(Rank);
        using var id = zeros(UniqueId.Bytes, dtype: ScalarType.Byte);
        var tag = BootstrapTag(group);
        if (index == 0)
        {
            UniqueId made;
            Check(ncclGetUniqueId(&made), "ncclGetUniqueId");
            new ReadOnlySpan<byte>(made.Internal, UniqueId.Bytes).CopyTo(id.bytes);
            foreach (var member in group.Ranks.Skip(1))
                _bootstrap.Send(id, member, tag);
        }
        else
            _bootstrap.Recv(id, group.Ranks[0], tag);
        UniqueId unique;
        id.bytes.CopyTo(new Span<byte>(unique.Internal, UniqueId.Bytes));
        nint comm;
        Check(ncclCommInitRank(&comm, group.Size, unique, index), $"ncclCommInitRank for {group.Name}");
        lock (_comms)
            _comms[group.Name] = comm;
        return comm;
    }

    /// <summary>Polls the stream until done: an asynchronous NCCL error, the timeout or an abort ends every communicator.</summary>
    private void Wait(nint stream, nint comm, string what)
    {
        var start = Stopwatch.GetTimestamp();
        while (true)
        {
            var state = cudaStreamQuery(stream);
            if (state == Success)
                return;
            if (state != CudaNotReady)
                throw Lost($"{what}: CUDA error {state}");
            if (_abort is { } reason)
                throw new CollectiveAbortedException($"rank {Rank}: {what} aborted: {reason}");
            int error;
            if (ncclCommGetAsyncError(comm, &error) == Success && error is not (Success or InProgress))
                throw Lost($"{what}: {ErrorText(error)} (a peer is gone)");
            if (Stopwatch.GetElapsedTime(start) > _timeout)
                throw Lost($"{what} waited more than {_timeout.TotalSeconds:0}s for its peers");
            Thread.Sleep(1);
        }
    }

    private CollectiveTimeoutException Lost(string message)
    {
        Abort(message);
        return new CollectiveTimeoutException($"rank {Rank}: {message}");
    }

    private nint SendStream()
    {
        if (_sendStream == 0)
        {
            nint stream;
            Check(cudaStreamCreateWithFlags(&stream, CudaStreamNonBlocking), "cudaStreamCreateWithFlags");
            _sendStream = stream;
        }
        return _sendStream;
    }

    /// <summary>Copies of sends that have left are freed (all of them once the send stream is idle).</summary>
    private void ReleaseSent()
    {
        if (_sendStream == 0 || cudaStreamQuery(_sendStream) != Success)
            return;
        foreach (var copy in _sending)
            copy.Dispose();
        _sending.Clear();
    }

    private void Check(int result, string what)
    {
        if (result == Success)
            return;
        if (_abort is { } reason)
            throw new CollectiveAbortedException($"rank {Rank}: {what} aborted: {reason}");
        throw new InvalidOperationException($"rank {Rank}: {what} failed: {ErrorText(result)}");
    }

    private static string ErrorText(int result) => Marshal.PtrToStringUTF8(ncclGetErrorString(result)) ?? $"NCCL error {result}";

    /// <summary>A point-to-point tag for a group's unique id, far above the pipeline's tags (2 × micro-batch + 0 or 1).</summary>
    private static int BootstrapTag(ProcessGroup group)
    {
        var hash = 2166136261u;
        foreach (var b in Encoding.UTF8.GetBytes(group.Name))
            hash = (hash ^ b) * 16777619u;
        return (int)(0x4000_0000u | (hash & 0x3FFF_FFFFu));
    }

    private static nint Data(Tensor t) => THSTensor_data(t.Handle);

    private static nuint Count(Tensor t) => (nuint)t.NumberOfElements;

    internal static DataType TypeOf(Tensor t) => t.dtype switch
    {
        ScalarType.Float32 => DataType.Float32,
        ScalarType.Float64 => DataType.Float64,
        ScalarType.BFloat16 => DataType.Bfloat16,
        ScalarType.Float16 => DataType.Float16,
        ScalarType.Int64 => DataType.Int64,
        ScalarType.Int32 => DataType.Int32,
        ScalarType.Byte or ScalarType.Bool => DataType.Uint8,
        ScalarType.Int8 => DataType.Int8,
        _ => throw new NotSupportedException($"NCCL has no type for {t.dtype} tensors"),
    };
}
