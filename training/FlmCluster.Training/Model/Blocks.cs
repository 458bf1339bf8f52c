using FlmCluster.Training.Config;
using FlmCluster.Training.Parallel;
using TorchSharp;
using static TorchSharp.torch;

namespace FlmCluster.Training.Model;

/// <summary>
/// Causal self-attention with packed [Q‖K‖V] projection (column-parallel, heads split over TP ranks), xPos on
/// q and k, scaled dot-product attention (1/√head_size) and a row-parallel output projection.
/// </summary>
public sealed class Attention : nn.Module
{
    private readonly int _localHeads;
    private readonly long _firstHead;
    private readonly int _headDim;
    private readonly int _layer;
    private readonly double _dropout;

    public ColumnParallelLinear QkvProjection { get; }
    public RowParallelLinear OutputProjection { get; }

    /// <param name="layer">Global layer index (keys the dropout masks).</param>
    public Attention(ModelConfig config, TensorParallelContext tp, ScalarType dtype, Device device, int layer) : base("Attention")
    {
        _localHeads = config.Heads / tp.Size;
        _firstHead = tp.ShardStart(config.Heads);
        _headDim = config.HeadDim;
        _layer = layer;
        _dropout = config.Dropout;
        QkvProjection = new ColumnParallelLinear(config.Hidden, 3L * config.AttentionWidth, tp, dtype, device);
        OutputProjection = new RowParallelLinear(config.AttentionWidth, config.Hidden, tp, dtype, device);
        register_module("c_attn", QkvProjection);
        register_module("c_proj", OutputProjection);
    }

    /// <param name="headMask">Growth mask over this rank's attention width (new heads' q, k, v scaled by c), or null.</param>
    /// <param name="dropout">Dropout masks of the batch's samples (needed in training when dropout &gt; 0).</param>
    public Tensor Forward(Tensor x, XPos xpos, LayerKvCache? cache, Tensor? headMask = null, DropoutMasks? dropout = null)
    {
        var batch = x.shape[0];
        var time = x.shape[1];
        var width = (long)_localHeads * _headDim;
        var qkv = QkvProjection.Forward(x);
        Tensor Heads(long offset)
        {
            var part = qkv.narrow(-1, offset, width);
            if (headMask is not null)
                part = part * headMask;
            return part.view(batch, time, _localHeads, _headDim).transpose(1, 2);
        }
        var q = Heads(0);
        var k = Heads(width);
        var v = Heads(2 * width);
        if (cache is not null)
            (k, v) = cache.Append(k, v);
        (q, k) = xpos.Apply(q, k);
        var lq = q.shape[2];
        var lk = k.shape[2];
        Tensor attended;
        if (DropoutMasks.For(dropout, training, _dropout) is { } masks)
            attended = AttendWithDropout(q, k, v, masks);
        else if (lq == lk)
            attended = nn.functional.scaled_dot_product_attention(q, k, v, null, 0, true);
        else if (lq == 1)
            attended = nn.functional.scaled_dot_product_attention(q, k, v, null, 0, false);
        else
            attended = nn.functional.scaled_dot_product_attention(q, k, v, CausalMask(lq, lk, q.device), 0, false);
        var merged = attended.transpose(1, 2).reshape(batch, time, width);
        return OutputProjection.Forward(merged);
    }

    /// <summary>
    /// Attention spelled out so that the probabilities take our keyed mask (SDPA would draw its own): softmax in at
    /// least fp32, masks keyed by global head so every TP split drops the same probabilities.
    /// </summary>
    private Tensor AttendWithDropout(Tensor q, Tensor k, Tensor v, DropoutMasks masks)
    {
        var lq = q.shape[2];
        var lk = k.shape[2];
        var scores = q.matmul(k.transpose(-2, -1)) * (1.0 / Math.Sqrt(_headDim));
        scores = scores.masked_fill(CausalMask(lq, lk, q.device).logical_not(), double.NegativeInfinity);
        var precise = q.dtype is ScalarType.Float64 or ScalarType.Float32 ? scores : scores.to(ScalarType.Float32);
        var probs = nn.functional.softmax(precise, -1).to(q.dtype);
        probs = masks.Apply(probs, _dropout, _layer, DropoutSite.AttentionProbabilities, _firstHead);
        return probs.matmul(v);
    }

    /// <summary>Queries are the last lq of lk positions: query i may see keys 0 … lk − lq + i.</summary>
    private static Tensor CausalMask(long lq, long lk, Device device) =>
        ones(lq, lk, dtype: ScalarType.Bool, device: device).tril(lk - lq);
}

/// <summary>FFN d → f → d with tanh-approximate GELU; column-parallel in, row-parallel out.</summary>
public sealed class Mlp : nn.Module
{
    public ColumnParallelLinear Input { get; }
    public RowParallelLinear Output { get; }

    public Mlp(ModelConfig config, TensorParallelContext tp, ScalarType dtype, Device device) : base("Mlp")
    {
        Input = new ColumnParallelLinear(config.Hidden, config.FfnSize, tp, dtype, device);
        Output = new RowParallelLinear(config.FfnSize, config.Hidden, tp, dtype, device);
        register_module("c_fc", Input);
        register_module("c_proj", Output);
    }

    /// <param name="ffnMask">Growth mask over this rank's FFN units, applied before GELU (GELU(0) = 0), or null.</param>
    public Tensor Forward(Tensor x, Tensor? ffnMask = null)
    {
        var inner = Input.Forward(x);
        if (ffnMask is not null)
            inner = inner * ffnMask;
        return Output.Forward(nn.functional.gelu(inner, TorchSharp.Modules.GELU.Approximate.tanh));
    }
}

/// <summary>Pre-LN residual block: x + Attn(LN1(x)), then x + MLP(LN2(x)).</summary>
public sealed class Block : nn.Module
{
    private readonly double _dropout;

    /// <summary>Global layer index.</summary>
    public int Layer { get; }
    public LayerNormLayer Ln1 { get; }
    public Attention Attention { get; }
    public LayerNormLayer Ln2 { get; }
    public Mlp Mlp { get; }

    public Block(ModelConfig config, TensorParallelContext tp, ScalarType dtype, Device device, int layer) : base("Block")
    {
        _dropout = config.Dropout;
        Layer = layer;
        Ln1 = new LayerNormLayer(config.Hidden, config.LnEps, dtype, device);
        Attention = new Attention(config, tp, dtype, device, layer);
        Ln2 = new LayerNormLayer(config.Hidden, config.LnEps, dtype, device);
        Mlp = new Mlp(config, tp, dtype, device);
        register_module("ln_1", Ln1);
        register_module("attn", Attention);
        register_module("ln_2", Ln2);
        register_module("mlp", Mlp);
    }

    /// <summary>
    /// With growth masks: LayerNorms use masked statistics, branch outputs are multiplied by the hidden mask, and
    /// an inserted layer is blended in as c·Block(x) + (1 − c)·x = x + c·(attention + MLP branch).
    /// Branch outputs are replicated over TP ranks (after the row-parallel all-reduce), so their dropout masks are too.
    /// </summary>
    public Tensor Forward(Tensor x, XPos xpos, LayerKvCache? cache, GrowthMasks? masks = null, double blend = 1.0, DropoutMasks? dropout = null)
    {
        var hidden = masks?.Hidden;
        var attention = Attention.Forward(Ln1.Forward(x, hidden), xpos, cache, masks?.Heads, dropout);
        attention = Mask(Dropout(attention, dropout, DropoutSite.AttentionOutput), hidden);
        var h = x + attention;
        var mlp = Mask(Dropout(Mlp.Forward(Ln2.Forward(h, hidden), masks?.Ffn), dropout, DropoutSite.MlpOutput), hidden);
        return blend == 1.0 ? h + mlp : x + (attention + mlp) * blend;
    }

    private static Tensor Mask(Tensor x, Tensor? mask) => mask is null ? x : x * mask;

    private Tensor Dropout(Tensor x, DropoutMasks? dropout, DropoutSite site) =>
        DropoutMasks.For(dropout, training, _dropout) is { } masks ? masks.Apply(x, _dropout, Layer, site) : x;
}
