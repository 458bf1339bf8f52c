using FlmCluster.Training.Parallel;
using TorchSharp;
using TorchSharp.Modules;
using static TorchSharp.torch;

namespace FlmCluster.Training.Model;

/// <summary>Creates parameters of a given shape, dtype and device, filled later by <see cref="ModelInitializer"/>.</summary>
internal static class Params
{
    public static Parameter Create(long[] shape, ScalarType dtype, Device device) =>
        new(zeros(shape, dtype: dtype, device: device), requires_grad: true);
}

/// <summary>LayerNorm with weight and bias (eps from the config).</summary>
public sealed class LayerNormLayer : nn.Module
{
    private readonly double _eps;
    public Parameter Weight { get; }
    public Parameter Bias { get; }

    public LayerNormLayer(long width, double eps, ScalarType dtype, Device device) : base("LayerNorm")
    {
        _eps = eps;
        Weight = Params.Create([width], dtype, device);
        Bias = Params.Create([width], dtype, device);
        register_parameter("weight", Weight);
        register_parameter("bias", Bias);
    }

    public Tensor Forward(Tensor x) => nn.functional.layer_norm(x, [Weight.shape[0]], Weight, Bias, _eps);

    /// <summary>
    /// Masked LayerNorm for hidden growth: mean and variance weighted by the mask (old coordinates 1, new c),
    /// output multiplied by the mask. At c = 0 it is the old LayerNorm on the old coordinates and 0 elsewhere;
    /// at c = 1 it is the plain LayerNorm.
    /// </summary>
    public Tensor Forward(Tensor x, Tensor? mask)
    {
        if (mask is null)
            return Forward(x);
        var total = mask.sum();
        var mean = (x * mask).sum(-1, keepdim: true) / total;
        var centred = x - mean;
        var variance = (centred.square() * mask).sum(-1, keepdim: true) / total;
        return (centred * (variance + _eps).rsqrt() * Weight + Bias) * mask;
    }
}

/// <summary>
/// y = x Wᵀ + b with the output features split over tensor-parallel ranks (Megatron's column-parallel linear;
/// the output stays split). W is [out/tp, in].
/// </summary>
public sealed class ColumnParallelLinear : nn.Module
{
    private readonly TensorParallelContext _tp;
    public Parameter Weight { get; }
    public Parameter Bias { get; }

    public ColumnParallelLinear(long inFeatures, long outFeatures, TensorParallelContext tp, ScalarType dtype, Device device) : base("ColumnParallelLinear")
    {
        _tp = tp;
        Weight = Params.Create([outFeatures / tp.Size, inFeatures], dtype, device);
        Bias = Params.Create([outFeatures / tp.Size], dtype, device);
        register_parameter("weight", Weight);
        register_parameter("bias", Bias);
    }

    public Tensor Forward(Tensor x) => nn.functional.linear(_tp.CopyToRegion(x), Weight, Bias);
}

/// <summary>
/// y = x Wᵀ + b with the input features split over tensor-parallel ranks (row-parallel): partial products
/// are all-reduced, then the replicated bias is added once. W is [out, in/tp].
/// </summary>
public sealed class RowParallelLinear : nn.Module
{
    private readonly TensorParallelContext _tp;
    public Parameter Weight { get; }
    public Parameter Bias { get; }

    public RowParallelLinear(long inFeatures, long outFeatures, TensorParallelContext tp, ScalarType dtype, Device device) : base("RowParallelLinear")
    {
        _tp = tp;
        Weight = Params.Create([outFeatures, inFeatures / tp.Size], dtype, device);
        Bias = Params.Create([outFeatures], dtype, device);
        register_parameter("weight", Weight);
        register_parameter("bias", Bias);
    }

    public Tensor Forward(Tensor x) => _tp.ReduceFromRegion(nn.functional.linear(x, Weight)) + Bias;
}

/// <summary>
/// Embedding whose rows (vocabulary) are split over tensor-parallel ranks: each rank looks up the ids in
/// its range, others contribute zeros, and the partial embeddings are all-reduced.
/// </summary>
public sealed class VocabParallelEmbedding : nn.Module
{
    private readonly TensorParallelContext _tp;
    public Parameter Weight { get; }
    public long VocabStart { get; }
    public long LocalRows { get; }

    public VocabParallelEmbedding(long paddedVocab, long width, TensorParallelContext tp, ScalarType dtype, Device device) : base("VocabParallelEmbedding")
    {
        _tp = tp;
        LocalRows = paddedVocab / tp.Size;
        VocabStart = tp.Rank * LocalRows;
        Weight = Params.Create([LocalRows, width], dtype, device);
        register_parameter("weight", Weight);
    }

    public Tensor Forward(Tensor ids)
    {
        var shape = ids.shape.Append(Weight.shape[1]).ToArray();
        if (_tp.Size == 1)
            return Weight.index_select(0, ids.reshape(-1)).view(shape);
        var outside = ids.lt(VocabStart).logical_or(ids.ge(VocabStart + LocalRows));
        var local = (ids - VocabStart).masked_fill(outside, 0);
        var rows = Weight.index_select(0, local.reshape(-1)).view(shape);
        rows = rows.masked_fill(outside.unsqueeze(-1), 0);
        return _tp.ReduceFromRegion(rows);
    }
}
