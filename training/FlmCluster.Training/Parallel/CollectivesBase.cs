using System.Diagnostics;
using TorchSharp;
using static TorchSharp.torch;

namespace FlmCluster.Training.Parallel;

/// <summary>A span of raw tensor bytes in native memory that does not move while an operation runs.</summary>
public readonly unsafe struct RawBuffer(byte* pointer, int length)
{
    public byte* Pointer { get; } = pointer;
    public int Length { get; } = length;
    public Span<byte> Span => new(Pointer, Length);
    public bool SameAs(RawBuffer other) => Pointer == other.Pointer && Length == other.Length;
}

/// <summary>
/// Argument checks, single-member shortcuts, host staging of device or strided tensors, and timing shared
/// by every <see cref="ICollectives"/> implementation; subclasses move raw bytes.
/// </summary>
public abstract unsafe class CollectivesBase : ICollectives
{
    public int Rank { get; }
    public CommStats Stats { get; } = new();

    protected CollectivesBase(int rank) => Rank = rank;

    protected abstract void AllReduceRaw(ProcessGroup group, int index, RawBuffer data, ScalarType type, ReduceOp op);
    protected abstract void ReduceScatterRaw(ProcessGroup group, int index, RawBuffer input, RawBuffer output, ScalarType type);
    protected abstract void AllGatherRaw(ProcessGroup group, int index, RawBuffer input, RawBuffer output);
    protected abstract void BroadcastRaw(ProcessGroup group, int index, RawBuffer data, int root);
    protected abstract void SendRaw(RawBuffer data, int destinationRank, int tag);
    protected abstract void RecvRaw(RawBuffer data, int sourceRank, int tag);
    protected abstract void BarrierRaw(ProcessGroup group, int index);

    public void AllReduce(ProcessGroup group, Tensor tensor, ReduceOp op = ReduceOp.Sum)
    {
        var index = group.IndexOf(Rank);
        if (!Reduction.CanReduce(tensor.dtype))
            throw new NotSupportedException($"all-reduce of {tensor.dtype} tensors is not supported");
        if (group.Size == 1)
            return;
        Timed(tensor.NumberOfElements * tensor.ElementSize, () =>
            WithBytes(tensor, writeBack: true, data => AllReduceRaw(group, index, data, tensor.dtype, op)));
    }

    public void ReduceScatter(ProcessGroup group, Tensor input, Tensor output)
    {
        var index = group.IndexOf(Rank);
        if (input.dtype != output.dtype)
            throw new ArgumentException($"reduce-scatter input is {input.dtype} but output is {output.dtype}");
        if (input.NumberOfElements != output.NumberOfElements * group.Size)
            throw new ArgumentException($"reduce-scatter input has {input.NumberOfElements} elements, expected {group.Size} × {output.NumberOfElements}");
        if (!Reduction.CanReduce(input.dtype))
            throw new NotSupportedException($"reduce-scatter of {input.dtype} tensors is not supported");
        if (group.Size == 1)
        {
            if (!SameMemory(input, output))
                using (no_grad()) output.copy_(input.view(output.shape));
            return;
        }
        Timed(input.NumberOfElements * input.ElementSize, () =>
            WithBytes(input, writeBack: false, inBytes =>
                WithBytes(output, writeBack: true, outBytes => ReduceScatterRaw(group, index, inBytes, outBytes, input.dtype))));
    }

    public void AllGather(ProcessGroup group, Tensor input, Tensor output)
    {
        var index = group.IndexOf(Rank);
        if (input.dtype != output.dtype)
            throw new ArgumentException($"all-gather input is {input.dtype} but output is {output.dtype}");
        if (output.NumberOfElements != input.NumberOfElements * group.Size)
            throw new ArgumentException($"all-gather output has {output.NumberOfElements} elements, expected {group.Size} × {input.NumberOfElements}");
        if (group.Size == 1)
        {
            if (!SameMemory(input, output))
                using (no_grad()) output.copy_(input.view(output.shape));
            return;
        }
        Timed(output.NumberOfElements * output.ElementSize, () =>
            WithBytes(output, writeBack: true, outBytes =>
            {
                // The input is often this member's chunk of the output: then it is already in place.
                var ownChunk = new RawBuffer(outBytes.Pointer + (long)index * (outBytes.Length / group.Size), outBytes.Length / group.Size);
                if (IsChunkOf(input, output, index, group.Size) && output.is_contiguous() && output.device_type == DeviceType.CPU)
                    AllGatherRaw(group, index, ownChunk, outBytes);
                else
                    WithBytes(input, writeBack: false, inBytes => AllGatherRaw(group, index, inBytes, outBytes));
            }));
    }

    public void Broadcast(ProcessGroup group, Tensor tensor, int root)
    {
        var index = group.IndexOf(Rank);
        if (root < 0 || root >= group.Size)
            throw new ArgumentOutOfRangeException(nameof(root), $"root {root} outside group {group}");
        if (group.Size == 1)
            return;
        Timed(tensor.NumberOfElements * tensor.ElementSize, () =>
            WithBytes(tensor, writeBack: index != root, data => BroadcastRaw(group, index, data, root)));
    }

    public void Send(Tensor tensor, int destinationRank, int tag)
    {
        if (destinationRank == Rank)
            throw new ArgumentException("a rank cannot send to itself");
        Timed(tensor.NumberOfElements * tensor.ElementSize, () =>
            WithBytes(tensor, writeBack: false, data => SendRaw(data, destinationRank, tag)));
    }

    public void Recv(Tensor tensor, int sourceRank, int tag)
    {
        if (sourceRank == Rank)
            throw new ArgumentException("a rank cannot receive from itself");
        Timed(tensor.NumberOfElements * tensor.ElementSize, () =>
            WithBytes(tensor, writeBack: true, data => RecvRaw(data, sourceRank, tag)), receive: true);
    }

    public void Barrier(ProcessGroup group)
    {
        var index = group.IndexOf(Rank);
        if (group.Size == 1)
            return;
        Timed(0, () => BarrierRaw(group, index));
    }

    private void Timed(long bytes, Action action, bool receive = false)
    {
        var start = Stopwatch.GetTimestamp();
        action();
        Stats.Add(bytes, Stopwatch.GetElapsedTime(start), receive);
    }

    /// <summary>
    /// Runs <paramref name="action"/> on the tensor's bytes: directly for contiguous CPU tensors, otherwise
    /// through a contiguous host copy (copied back when the operation writes).
    /// </summary>
    private static void WithBytes(Tensor tensor, bool writeBack, Action<RawBuffer> action)
    {
        var direct = tensor.device_type == DeviceType.CPU && tensor.is_contiguous();
        var host = direct ? tensor : tensor.detach().contiguous().cpu();
        try
        {
            var bytes = host.bytes;
            if (bytes.Length > int.MaxValue)
                throw new NotSupportedException("tensors over 2 GiB must be split before a collective");
            fixed (byte* p = bytes)
                action(new RawBuffer(p, bytes.Length));
            if (!direct && writeBack)
                using (no_grad()) tensor.copy_(host);
        }
        finally
        {
            if (!direct)
                host.Dispose();
        }
    }

    private static bool SameMemory(Tensor a, Tensor b) =>
        a.device_type == DeviceType.CPU && b.device_type == DeviceType.CPU && a.is_contiguous() && b.is_contiguous()
        && a.NumberOfElements == b.NumberOfElements && BytesPointer(a) == BytesPointer(b);

    private static bool IsChunkOf(Tensor chunk, Tensor whole, int index, int count) =>
        chunk.device_type == DeviceType.CPU && whole.device_type == DeviceType.CPU && chunk.is_contiguous() && whole.is_contiguous()
        && chunk.NumberOfElements * count == whole.NumberOfElements
        && BytesPointer(chunk) == BytesPointer(whole) + index * chunk.NumberOfElements * chunk.ElementSize;

    private static long BytesPointer(Tensor t)
    {
        fixed (byte* p = t.bytes)
            return (long)p;
    }
}
