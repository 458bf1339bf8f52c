using FlmCluster.Training.Config;
using static TorchSharp.torch;

namespace FlmCluster.Training.Model;

/// <summary>
/// xPos rotary embedding as FLM applies it (docs/model.md, xPos): half-split ("NeoX") rotation with
/// θ_i = theta^(−2i/d), per-pair decay ζ_i = (2i + γd)/((1+γ)d) raised to (p − c)/B with the centre
/// c derived from the key length (min_pos = ⌊−L_k/2⌋), q scaled by ζ^(…) and k by its inverse. Queries
/// take the last L_q key positions. Only n − m survives in q·k, so cached keys stay valid.
/// </summary>
public sealed class XPos(int headDim, XposConfig config)
{
    private Tables? _cached;

    public int HeadDim { get; } = headDim;

    /// <summary>Applies xPos to q [B,H,Lq,D] and k [B,H,Lk,D]; the query positions are Lk−Lq … Lk−1.</summary>
    public (Tensor Q, Tensor K) Apply(Tensor q, Tensor k)
    {
        var lk = k.shape[2];
        var lq = q.shape[2];
        var t = TablesFor(lk, lq, q.dtype, q.device);
        var qOut = (q * t.CosQ + RotateHalf(q) * t.SinQ) * t.ScaleQ;
        var kOut = (k * t.CosK + RotateHalf(k) * t.SinK) * t.InvScaleK;
        return (qOut, kOut);
    }

    internal static Tensor RotateHalf(Tensor x)
    {
        var half = x.shape[^1] / 2;
        var x1 = x.narrow(-1, 0, half);
        var x2 = x.narrow(-1, half, half);
        return cat([x2.neg(), x1], -1);
    }

    private Tables TablesFor(long lk, long lq, ScalarType dtype, Device device)
    {
        if (_cached is { } c && c.Lk == lk && c.Lq == lq && c.DType == dtype && c.Device == device.ToString())
            return c;
        _cached?.Dispose();
        _cached = Build(lk, lq, dtype, device);
        return _cached;
    }

    private Tables Build(long lk, long lq, ScalarType dtype, Device device)
    {
        using var scope = NewDisposeScope();
        var d = HeadDim;
        var pairs = arange(0, d, 2, dtype: ScalarType.Float64);                       // 2i
        var invFreq = pow(config.Theta, pairs / d).reciprocal();                           // θ_i
        var posK = arange(0, lk, dtype: ScalarType.Float64);
        var angK = outer(posK, invFreq);
        angK = cat([angK, angK], -1);                                                     // [Lk, D]
        var zeta = (pairs + config.Gamma * d) / ((1 + config.Gamma) * d);                 // [D/2]
        var minPos = (long)Math.Floor(-lk / 2.0);
        var power = arange(minPos, minPos + lk, dtype: ScalarType.Float64) / config.ScaleBase; // [Lk]
        var scale = pow(zeta.unsqueeze(0), power.unsqueeze(1));                            // [Lk, D/2]
        scale = cat([scale, scale], -1);                                                  // [Lk, D]
        var angQ = angK.narrow(0, lk - lq, lq);
        var scaleQ = scale.narrow(0, lk - lq, lq);
        Tensor Keep(Tensor x) => x.to(dtype, device).contiguous().DetachFromDisposeScope();
        return new Tables(lk, lq, dtype, device.ToString(),
            Keep(angQ.cos()), Keep(angQ.sin()), Keep(scaleQ),
            Keep(angK.cos()), Keep(angK.sin()), Keep(scale.reciprocal()));
    }

    private sealed record Tables(long Lk, long Lq, ScalarType DType, string Device,
        Tensor CosQ, Tensor SinQ, Tensor ScaleQ, Tensor CosK, Tensor SinK, Tensor InvScaleK) : IDisposable
    {
        public void Dispose()
        {
            CosQ.Dispose(); SinQ.Dispose(); ScaleQ.Dispose();
            CosK.Dispose(); SinK.Dispose(); InvScaleK.Dispose();
        }
    }
}
