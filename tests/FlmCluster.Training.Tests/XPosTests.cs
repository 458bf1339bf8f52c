using FlmCluster.Training.Config;
using FlmCluster.Training.Model;
using static TorchSharp.torch;

namespace FlmCluster.Training.Tests;

public class XPosTests
{
    private static readonly XposConfig Config = new();

    /// <summary>The formula of docs/model.md (xPos) in plain double arithmetic, one element at a time.</summary>
    private static double[,,,] Reference(double[,,,] x, int lk, bool isQuery)
    {
        int b = x.GetLength(0), h = x.GetLength(1), l = x.GetLength(2), d = x.GetLength(3);
        var result = new double[b, h, l, d];
        var minPos = (int)Math.Floor(-lk / 2.0);
        for (var bi = 0; bi < b; bi++)
        for (var hi = 0; hi < h; hi++)
        for (var t = 0; t < l; t++)
        {
            var pos = isQuery ? lk - l + t : t;
            for (var j = 0; j < d; j++)
            {
                var i = j % (d / 2);
                var angle = pos * Math.Pow(Config.Theta, -2.0 * i / d);
                var rotated = j < d / 2 ? -x[bi, hi, t, j + d / 2] : x[bi, hi, t, j - d / 2];
                var zeta = (2.0 * i + Config.Gamma * d) / ((1 + Config.Gamma) * d);
                var scale = Math.Pow(zeta, (pos + minPos) / Config.ScaleBase);
                var v = x[bi, hi, t, j] * Math.Cos(angle) + rotated * Math.Sin(angle);
                result[bi, hi, t, j] = isQuery ? v * scale : v / scale;
            }
        }
        return result;
    }

    private static double[,,,] Random4(int b, int h, int l, int d, Random rng)
    {
        var a = new double[b, h, l, d];
        for (var i = 0; i < b; i++) for (var j = 0; j < h; j++) for (var k = 0; k < l; k++) for (var m = 0; m < d; m++)
            a[i, j, k, m] = rng.NextDouble() * 2 - 1;
        return a;
    }

    private static Tensor ToTensor(double[,,,] a) => tensor(a.Cast<double>().ToArray(), [a.GetLength(0), a.GetLength(1), a.GetLength(2), a.GetLength(3)], dtype: ScalarType.Float64);

    [Theory]
    [InlineData(7, 7, 8)]
    [InlineData(9, 3, 16)]
    [InlineData(300, 1, 32)]
    [InlineData(2048, 5, 128)]
    public void Matches_independent_fp64_implementation_of_the_formula(int lk, int lq, int dim)
    {
        var rng = new Random(lk * 31 + lq);
        var q = Random4(2, 2, lq, dim, rng);
        var k = Random4(2, 2, lk, dim, rng);
        var xpos = new XPos(dim, Config);
        using var scope = NewDisposeScope();
        var (qOut, kOut) = xpos.Apply(ToTensor(q), ToTensor(k));
        var qRef = ToTensor(Reference(q, lk, isQuery: true));
        var kRef = ToTensor(Reference(k, lk, isQuery: false));
        Assert.True(qOut.allclose(qRef, rtol: 1e-12, atol: 1e-12), $"q max diff {(qOut - qRef).abs().max().item<double>()}");
        Assert.True(kOut.allclose(kRef, rtol: 1e-12, atol: 1e-12), $"k max diff {(kOut - kRef).abs().max().item<double>()}");

        // fp32 inputs give the same result to fp32 precision.
        var (q32, k32) = xpos.Apply(ToTensor(q).to(ScalarType.Float32), ToTensor(k).to(ScalarType.Float32));
        Assert.True(q32.to(ScalarType.Float64).allclose(qRef, rtol: 1e-5, atol: 1e-5));
        Assert.True(k32.to(ScalarType.Float64).allclose(kRef, rtol: 1e-5, atol: 1e-5));
    }

    [Fact]
    public void Query_key_product_depends_only_on_relative_position()
    {
        // The same q and k vectors at every position: after xPos, q_n · k_m must depend on n − m only,
        // for any key length (the scale centre moves with it).
        const int dim = 16;
        var rng = new Random(5);
        var qv = Enumerable.Range(0, dim).Select(_ => rng.NextDouble() - 0.5).ToArray();
        var kv = Enumerable.Range(0, dim).Select(_ => rng.NextDouble() - 0.5).ToArray();
        var xpos = new XPos(dim, Config);
        var byDistance = new Dictionary<int, double>();
        foreach (var length in new[] { 12, 33, 100 })
        {
            using var scope = NewDisposeScope();
            var q = tensor(qv, dtype: ScalarType.Float64).expand(1, 1, length, dim).contiguous();
            var k = tensor(kv, dtype: ScalarType.Float64).expand(1, 1, length, dim).contiguous();
            var (qr, kr) = xpos.Apply(q, k);
            var scores = matmul(qr, kr.transpose(-1, -2))[0, 0];
            for (var n = 0; n < length; n++)
            for (var m = 0; m <= n; m++)
            {
                var s = scores[n, m].item<double>();
                if (byDistance.TryGetValue(n - m, out var expected))
                    Assert.Equal(expected, s, 1e-10);
                else
                    byDistance[n - m] = s;
            }
        }
    }
}
