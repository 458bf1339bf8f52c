using TorchSharp;
using static TorchSharp.torch;

namespace FlmCluster.Training.Parallel;

/// <summary>This rank's place in its tensor-parallel group and the means to talk to it.</summary>
public sealed class TensorParallelContext(ICollectives collectives, ProcessGroup group)
{
    public static TensorParallelContext None { get; } = new(new LocalOnlyCollectives(), new ProcessGroup("tp/local", [0]));

    public ICollectives Collectives { get; } = collectives;
    public ProcessGroup Group { get; } = group;
    public int Size => Group.Size;
    public int Rank => Group.IndexOf(Collectives.Rank);

    /// <summary>Global index of this rank's first item when <paramref name="total"/> items (heads, rows) are split evenly in order.</summary>
    public long ShardStart(long total) => total / Size * Rank;

    /// <summary>Megatron's f: identity forward, all-reduce of the gradient backward (enters a TP region).</summary>
    public Tensor CopyToRegion(Tensor x) => Size == 1 ? x : CopyToTensorParallel.apply(x, this);

    /// <summary>Megatron's g: all-reduce forward, identity backward (leaves a TP region).</summary>
    public Tensor ReduceFromRegion(Tensor x) => Size == 1 ? x : ReduceFromTensorParallel.apply(x, this);

    /// <summary>All-reduce without autograd (statistics such as the max logit).</summary>
    public void AllReduceNoGrad(Tensor x, ReduceOp op)
    {
        if (Size > 1)
            Collectives.AllReduce(Group, x, op);
    }

    /// <summary>Collectives for a single rank that never communicates (layout 1/1/1, generation).</summary>
    private sealed class LocalOnlyCollectives : ICollectives
    {
        public int Rank => 0;
        public CommStats Stats { get; } = new();
        public void AllReduce(ProcessGroup group, Tensor tensor, ReduceOp op = ReduceOp.Sum) => Single(group);
        public void ReduceScatter(ProcessGroup group, Tensor input, Tensor output) => Single(group);
        public void AllGather(ProcessGroup group, Tensor input, Tensor output) => Single(group);
        public void Broadcast(ProcessGroup group, Tensor tensor, int root) => Single(group);
        public void Send(Tensor tensor, int destinationRank, int tag) => throw new InvalidOperationException("a single rank has no peers");
        public void Recv(Tensor tensor, int sourceRank, int tag) => throw new InvalidOperationException("a single rank has no peers");
        public void Barrier(ProcessGroup group) => Single(group);

        private static void Single(ProcessGroup group)
        {
            if (group.Size != 1)
                throw new InvalidOperationException($"group {group} has peers but this rank has no collectives");
        }
    }
}

internal sealed class CopyToTensorParallel : autograd.SingleTensorFunction<CopyToTensorParallel>
{
    public override string Name => "CopyToTensorParallel";

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        ctx.save_data("tp", vars[1]);
        return ((Tensor)vars[0]).alias();
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad)
    {
        var tp = (TensorParallelContext)ctx.get_data("tp");
        var reduced = grad.contiguous().clone();
        tp.Collectives.AllReduce(tp.Group, reduced);
        return [reduced, null!];
    }
}

internal sealed class ReduceFromTensorParallel : autograd.SingleTensorFunction<ReduceFromTensorParallel>
{
    public override string Name => "ReduceFromTensorParallel";

    public override Tensor forward(autograd.AutogradContext ctx, params object[] vars)
    {
        var tp = (TensorParallelContext)vars[1];
        var reduced = ((Tensor)vars[0]).contiguous().clone();
        tp.Collectives.AllReduce(tp.Group, reduced);
        return reduced;
    }

    public override List<Tensor> backward(autograd.AutogradContext ctx, Tensor grad) => [grad, null!];
}
