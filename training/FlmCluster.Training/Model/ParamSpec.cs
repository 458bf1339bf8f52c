using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FlmCluster.Training.Model;

/// <summary>Optimizer treatment of a parameter under μP (docs/model.md, μP).</summary>
public enum ParamGroup
{
    /// <summary>Hidden weight matrices: LR η/m, weight decay wd·m.</summary>
    Matrix,

    /// <summary>The (tied) embedding: LR η, weight decay wd.</summary>
    Embedding,

    /// <summary>Biases and LayerNorm parameters: LR η, no weight decay.</summary>
    NoDecay,
}

/// <summary>How a global tensor is split over tensor-parallel ranks.</summary>
public enum TpSplit
{
    /// <summary>Every TP rank holds the whole tensor (LayerNorm, row-parallel bias).</summary>
    Replicated,

    /// <summary>Rows (output features, vocabulary) are split: column-parallel weights and biases, embedding.</summary>
    Dim0,

    /// <summary>Columns (input features) are split: row-parallel weights.</summary>
    Dim1,

    /// <summary>Packed [Q‖K‖V] rows: each of the three blocks is split over heads.</summary>
    PackedQkvDim0,
}

/// <summary>
/// A parameter of the whole model, independent of layout: its global name (FLM-101B's Hugging Face
/// names), global shape, TP split, optimizer group and initialisation. Layout-specific pieces are slices.
/// </summary>
public sealed record ParamSpec(string Name, long[] Shape, TpSplit Split, ParamGroup Group, double InitStd, double InitConstant = 0)
{
    public long GlobalElements => Shape.Aggregate(1L, (a, b) => a * b);

    public long[] LocalShape(int tp)
    {
        var local = (long[])Shape.Clone();
        switch (Split)
        {
            case TpSplit.Dim0:
            case TpSplit.PackedQkvDim0:
                local[0] /= tp;
                break;
            case TpSplit.Dim1:
                local[1] /= tp;
                break;
        }
        return local;
    }

    /// <summary>The part of the global tensor that TP rank <paramref name="rank"/> of <paramref name="tp"/> holds.</summary>
    public Tensor Slice(Tensor full, int rank, int tp)
    {
        if (tp == 1 || Split == TpSplit.Replicated)
            return full;
        switch (Split)
        {
            case TpSplit.Dim0:
                {
                    var n = Shape[0] / tp;
                    return full.narrow(0, rank * n, n);
                }
            case TpSplit.Dim1:
                {
                    var n = Shape[1] / tp;
                    return full.narrow(1, rank * n, n);
                }
            default:
                {
                    var block = Shape[0] / 3;
                    var n = block / tp;
                    var rest = Shape.Skip(1).ToArray();
                    return full.view([3, block, .. rest]).narrow(1, rank * n, n).reshape([3 * n, .. rest]);
                }
        }
    }

    /// <summary>Rebuilds the global tensor from the TP slices (in TP-rank order).</summary>
    public Tensor Assemble(IReadOnlyList<Tensor> slices)
    {
        if (slices.Count == 1 || Split == TpSplit.Replicated)
            return slices[0];
        return Split switch
        {
            TpSplit.Dim0 => cat(slices.ToArray(), 0),
            TpSplit.Dim1 => cat(slices.ToArray(), 1),
            _ => cat(slices.Select(s => s.view([3, s.shape[0] / 3, .. s.shape.Skip(1)])).ToArray(), 1).reshape(Shape),
        };
    }
}

/// <summary>A live parameter of one rank: its spec and its local tensor.</summary>
public sealed record ModelParameter(ParamSpec Spec, Parameter Tensor, bool IsTiedCopy = false)
{
    public string Name => Spec.Name;

    /// <summary>
    /// Whether this rank's copy counts toward the global gradient norm: replicated tensors count on TP rank 0
    /// only, and the head's copy of the tied embedding on the last pipeline stage never counts.
    /// </summary>
    public bool CountsForNorm(int tpRank) => !IsTiedCopy && (Spec.Split != TpSplit.Replicated || tpRank == 0);
}
