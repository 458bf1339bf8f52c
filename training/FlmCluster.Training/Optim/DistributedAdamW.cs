using FlmCluster.Training.Config;
using FlmCluster.Training.Model;
using FlmCluster.Training.Parallel;
using TorchSharp;
using static TorchSharp.torch;

namespace FlmCluster.Training.Optim;

/// <summary>What one optimizer update did.</summary>
public sealed record UpdateResult(double GradNorm, double ClipCoefficient, bool Skipped);

/// <summary>
/// AdamW with decoupled weight decay over a rank's flat buffers, sharded over data-parallel ranks
/// (ZeRO-1, Megatron's distributed optimizer): gradients are reduce-scattered so each DP rank holds the sum
/// for its 1/dp of the buffer; the global gradient norm (every rank's unique gradients) is all-reduced over
/// the world and used to clip; each DP rank updates fp32 master weights and Adam moments of its shard only;
/// the updated parameters are all-gathered. μP: matrix weights use LR η/m and weight decay wd·m,
/// the embedding η and wd, biases and LayerNorms η and no decay. With dp = 1 this is plain AdamW.
/// </summary>
public sealed class DistributedAdamW : IDisposable
{
    private readonly FlatParameters _flat;
    private readonly ICollectives _comm;
    private readonly ProcessGroup _dataGroup;
    private readonly ProcessGroup _normGroup;
    private readonly OptimizerConfig _config;
    private readonly double _widthMult;
    private readonly bool _separateMaster;
    private readonly List<(FlatSegment Segment, long Start, long Length)> _shardSegments = [];
    private readonly List<(long Start, long Length)> _shardNormRanges = [];

    public long ShardStart { get; }
    public long ShardLength { get; }

    /// <summary>Updates applied so far (Adam's t).</summary>
    public long Step { get; set; }

    /// <summary>fp32 (or fp64) master weights of this rank's shard; a view of the parameters when they are already full precision.</summary>
    public Tensor Master { get; }
    public Tensor ExpAvg { get; }
    public Tensor ExpAvgSq { get; }

    /// <summary>Bytes of optimizer state this rank holds (moments, plus master weights when kept separately).</summary>
    public long StateBytes => (ExpAvg.NumberOfElements + ExpAvgSq.NumberOfElements) * ExpAvg.ElementSize
        + (_separateMaster ? Master.NumberOfElements * Master.ElementSize : 0);

    public DistributedAdamW(FlatParameters flat, ICollectives comm, ProcessGroup dataGroup, ProcessGroup normGroup, OptimizerConfig config, double widthMult)
    {
        _flat = flat;
        _comm = comm;
        _dataGroup = dataGroup;
        _normGroup = normGroup;
        _config = config;
        _widthMult = widthMult;
        var dp = dataGroup.Size;
        var index = dataGroup.IndexOf(comm.Rank);
        ShardLength = flat.PaddedTotal / dp;
        ShardStart = index * ShardLength;
        var shardEnd = ShardStart + ShardLength;

        foreach (var segment in flat.GroupSegments)
        {
            var lo = Math.Max(segment.Start, ShardStart);
            var hi = Math.Min(segment.Start + segment.Length, shardEnd);
            if (hi > lo)
                _shardSegments.Add((segment, lo - ShardStart, hi - lo));
        }
        foreach (var (start, length) in flat.NormSegments)
        {
            var lo = Math.Max(start, ShardStart);
            var hi = Math.Min(start + length, shardEnd);
            if (hi > lo)
                _shardNormRanges.Add((lo - ShardStart, hi - lo));
        }

        var paramType = flat.Params.dtype;
        var masterType = paramType == ScalarType.Float64 ? ScalarType.Float64 : ScalarType.Float32;
        _separateMaster = paramType != masterType;
        var shard = flat.Params.narrow(0, ShardStart, ShardLength);
        Master = _separateMaster ? shard.to(masterType) : shard;
        ExpAvg = zeros(ShardLength, dtype: masterType, device: flat.Params.device);
        ExpAvgSq = zeros(ShardLength, dtype: masterType, device: flat.Params.device);
    }

    public (double Lr, double WeightDecay) GroupSettings(ParamGroup group, double lr) => group switch
    {
        ParamGroup.Matrix => (lr / _widthMult, _config.WeightDecay * _widthMult),
        ParamGroup.Embedding => (lr, _config.WeightDecay),
        _ => (lr, 0.0),
    };

    /// <summary>Reduce-scatter, clip, update and all-gather. Every rank of the job calls it once per step.</summary>
    public UpdateResult Update(double lr)
    {
        using var scope = NewDisposeScope();
        using var _ = no_grad();
        var gradShard = _flat.Grads.narrow(0, ShardStart, ShardLength);
        _comm.ReduceScatter(_dataGroup, _flat.Grads, gradShard);

        double local = 0;
        foreach (var (start, length) in _shardNormRanges)
        {
            var g = gradShard.narrow(0, start, length);
            local += g.dot(g).ToScalar().ToDouble();
        }
        var sumSquares = tensor(new[] { local }, dtype: ScalarType.Float64);
        _comm.AllReduce(_normGroup, sumSquares);
        var norm = Math.Sqrt(sumSquares.item<double>());
        if (!double.IsFinite(norm))
            return new UpdateResult(norm, 0, Skipped: true);

        // As torch.nn.utils.clip_grad_norm_: coefficient max_norm / (norm + 1e-6), clamped to 1.
        var clip = _config.ClipGrad > 0 ? Math.Min(1.0, _config.ClipGrad / (norm + 1e-6)) : 1.0;
        Step++;
        var bias1 = 1 - Math.Pow(_config.Beta1, Step);
        var bias2Sqrt = Math.Sqrt(1 - Math.Pow(_config.Beta2, Step));
        foreach (var (segment, start, length) in _shardSegments)
        {
            var (groupLr, groupWd) = GroupSettings(segment.Group, lr);
            var g = gradShard.narrow(0, start, length);
            if (g.dtype != Master.dtype)
                g = g.to(Master.dtype);
            if (clip < 1.0)
                g = g.mul(clip);
            var p = Master.narrow(0, start, length);
            var m = ExpAvg.narrow(0, start, length);
            var v = ExpAvgSq.narrow(0, start, length);
            m.mul_(_config.Beta1).add_(g, alpha: 1 - _config.Beta1);
            v.mul_(_config.Beta2).addcmul_(g, g, value: 1 - _config.Beta2);
            var denominator = v.sqrt().div_(bias2Sqrt).add_(_config.Eps);
            if (groupWd > 0)
                p.mul_(1 - groupLr * groupWd);
            p.addcdiv_(m, denominator, value: -groupLr / bias1);
        }
        var paramShard = _flat.Params.narrow(0, ShardStart, ShardLength);
        if (_separateMaster)
            paramShard.copy_(Master);
        _comm.AllGather(_dataGroup, paramShard, _flat.Params);
        return new UpdateResult(norm, clip, Skipped: false);
    }

    public void Dispose()
    {
        if (_separateMaster)
            Master.Dispose();
        ExpAvg.Dispose();
        ExpAvgSq.Dispose();
    }
}
