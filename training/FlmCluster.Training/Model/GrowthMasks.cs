using static TorchSharp.torch;

namespace FlmCluster.Training.Model;

/// <summary>
/// Which structure of a grown model is new (Masked Structural Growth): the old hidden size, attention width
/// and FFN size, and the layers that were inserted. Independent of the mask value, which the coordinator
/// ramps from 0 to 1 step by step.
/// </summary>
/// <param name="OldHidden">Hidden size before growth (null: hidden did not grow).</param>
/// <param name="OldAttentionWidth">Heads × head size before growth (null: heads did not grow).</param>
/// <param name="OldFfn">FFN size before growth (null: FFN did not grow).</param>
/// <param name="NewLayers">Global indices of inserted layers (blended in with the mask).</param>
/// <param name="OldWidthMult">μP width multiplier before growth (the readout multiplier ramps from it).</param>
public sealed record GrowthShape(int? OldHidden, int? OldAttentionWidth, int? OldFfn, IReadOnlyList<int> NewLayers, double OldWidthMult)
{
    public bool HiddenGrew => OldHidden is not null;
    public bool IsNewLayer(int layer) => NewLayers.Contains(layer);
}

/// <summary>
/// The masks of one grown model at mask value c: vectors with 1 on old coordinates and c on new ones,
/// sliced to this rank's tensor-parallel shard where the masked tensor is split. Built once per step.
/// </summary>
public sealed class GrowthMasks
{
    public GrowthShape Shape { get; }
    public double Value { get; }

    /// <summary>[hidden] mask of the residual stream (replicated over TP), or null.</summary>
    public Tensor? Hidden { get; }

    /// <summary>This rank's slice of the [attention width] head mask, applied to each of Q, K and V, or null.</summary>
    public Tensor? Heads { get; }

    /// <summary>This rank's slice of the [FFN] mask, applied to c_fc's output before GELU, or null.</summary>
    public Tensor? Ffn { get; }

    public GrowthMasks(GrowthShape shape, double value, Config.ModelConfig config, int tpRank, int tpSize, ScalarType dtype, Device device)
    {
        Shape = shape;
        Value = value;
        if (shape.OldHidden is { } oldHidden)
            Hidden = Vector(config.Hidden, oldHidden, 0, config.Hidden, value, dtype, device);
        if (shape.OldAttentionWidth is { } oldWidth)
        {
            var local = config.AttentionWidth / tpSize;
            Heads = Vector(config.AttentionWidth, oldWidth, tpRank * local, local, value, dtype, device);
        }
        if (shape.OldFfn is { } oldFfn)
        {
            var local = config.FfnSize / tpSize;
            Ffn = Vector(config.FfnSize, oldFfn, tpRank * local, local, value, dtype, device);
        }
    }

    /// <summary>Blend weight of layer <paramref name="layer"/>: c for inserted layers, else 1.</summary>
    public double LayerBlend(int layer) => Shape.IsNewLayer(layer) ? Value : 1.0;

    /// <summary>Readout width multiplier, ramped from the old μP multiplier to the new one with the mask.</summary>
    public double ReadoutWidthMult(double newWidthMult) => Shape.OldWidthMult + Value * (newWidthMult - Shape.OldWidthMult);

    private static Tensor Vector(int full, int old, long start, long length, double value, ScalarType dtype, Device device)
    {
        var v = ones(full, dtype: ScalarType.Float64);
        if (full > old)
            v.narrow(0, old, full - old).fill_(value);
        return v.narrow(0, start, length).to(dtype, device);
    }
}
