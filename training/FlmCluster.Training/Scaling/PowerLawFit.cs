namespace FlmCluster.Training.Scaling;

/// <summary>L(N) = a · N^b + c fitted by least squares (μScaling's loss-prediction law).</summary>
public sealed record PowerLaw(double A, double B, double C, double Rmse)
{
    public double Predict(double n) => A * Math.Pow(n, B) + C;

    /// <summary>
    /// Fits the three parameters to points (N, L). For a fixed c the law is linear in log space
    /// (log(L − c) = log a + b log N), so c is searched (grid, then golden section) on the least-squares error
    /// in loss space, and Gauss–Newton refines (a, b, c) jointly.
    /// </summary>
    public static PowerLaw Fit(IReadOnlyList<double> n, IReadOnlyList<double> loss)
    {
        if (n.Count != loss.Count || n.Count < 3)
            throw new ArgumentException("a three-parameter fit needs at least three points");
        if (n.Any(x => x <= 0))
            throw new ArgumentException("N must be positive");
        var minLoss = loss.Min();
        var upper = minLoss - 1e-9 * Math.Max(1, Math.Abs(minLoss));
        // The irreducible loss c is not negative.
        var lower = 0.0;
        double Error(double c) => FitGivenC(n, loss, c).Sse;

        // Coarse grid, then golden-section refinement around the best grid point.
        const int grid = 400;
        var best = lower;
        var bestError = double.PositiveInfinity;
        for (var i = 0; i <= grid; i++)
        {
            var c = lower + (upper - lower) * i / grid;
            var e = Error(c);
            if (e < bestError)
                (best, bestError) = (c, e);
        }
        var step = (upper - lower) / grid;
        var (lo, hi) = (Math.Max(lower, best - step), Math.Min(upper, best + step));
        var phi = (Math.Sqrt(5) - 1) / 2;
        for (var i = 0; i < 100; i++)
        {
            var x1 = hi - phi * (hi - lo);
            var x2 = lo + phi * (hi - lo);
            if (Error(x1) < Error(x2)) hi = x2; else lo = x1;
        }
        var cBest = (lo + hi) / 2;
        var (a, b, _) = FitGivenC(n, loss, cBest);
        (a, b, cBest) = GaussNewton(n, loss, a, b, cBest);
        var rmse = Math.Sqrt(n.Select((x, i) => Math.Pow(a * Math.Pow(x, b) + cBest - loss[i], 2)).Average());
        return new PowerLaw(a, b, cBest, rmse);
    }

    private static (double A, double B, double Sse) FitGivenC(IReadOnlyList<double> n, IReadOnlyList<double> loss, double c)
    {
        var m = n.Count;
        double sx = 0, sy = 0, sxx = 0, sxy = 0;
        for (var i = 0; i < m; i++)
        {
            var x = Math.Log(n[i]);
            var y = Math.Log(Math.Max(loss[i] - c, 1e-300));
            sx += x; sy += y; sxx += x * x; sxy += x * y;
        }
        var b = (m * sxy - sx * sy) / (m * sxx - sx * sx);
        var a = Math.Exp((sy - b * sx) / m);
        var sse = 0.0;
        for (var i = 0; i < m; i++)
            sse += Math.Pow(a * Math.Pow(n[i], b) + c - loss[i], 2);
        return (a, b, sse);
    }

    private static (double, double, double) GaussNewton(IReadOnlyList<double> n, IReadOnlyList<double> loss, double a, double b, double c)
    {
        double Sse(double aa, double bb, double cc) => n.Select((x, i) => Math.Pow(aa * Math.Pow(x, bb) + cc - loss[i], 2)).Sum();
        var current = Sse(a, b, c);
        var lambda = 1e-3;
        for (var iteration = 0; iteration < 200; iteration++)
        {
            // Normal equations JᵀJ δ = −Jᵀr with Levenberg damping.
            var jtj = new double[3, 3];
            var jtr = new double[3];
            for (var i = 0; i < n.Count; i++)
            {
                var p = Math.Pow(n[i], b);
                var r = a * p + c - loss[i];
                double[] j = [p, a * p * Math.Log(n[i]), 1];
                for (var u = 0; u < 3; u++)
                {
                    jtr[u] += j[u] * r;
                    for (var v = 0; v < 3; v++)
                        jtj[u, v] += j[u] * j[v];
                }
            }
            for (var u = 0; u < 3; u++)
                jtj[u, u] *= 1 + lambda;
            var delta = Solve3(jtj, jtr.Select(x => -x).ToArray());
            if (delta is null)
                break;
            // Projected step: the irreducible loss c stays non-negative.
            var (na, nb, nc) = (a + delta[0], b + delta[1], Math.Max(0, c + delta[2]));
            var next = Sse(na, nb, nc);
            if (next < current)
            {
                var improvement = current - next;
                (a, b, c, current) = (na, nb, nc, next);
                lambda = Math.Max(lambda / 10, 1e-12);
                if (improvement <= 1e-30 + 1e-15 * current)
                    break;
            }
            else
            {
                lambda *= 10;
                if (lambda > 1e12)
                    break;
            }
        }
        return (a, b, c);
    }

    private static double[]? Solve3(double[,] m, double[] rhs)
    {
        // Gaussian elimination with partial pivoting on a 3 × 3 system.
        var a = new double[3, 4];
        for (var i = 0; i < 3; i++)
        {
            for (var j = 0; j < 3; j++) a[i, j] = m[i, j];
            a[i, 3] = rhs[i];
        }
        for (var col = 0; col < 3; col++)
        {
            var pivot = col;
            for (var row = col + 1; row < 3; row++)
                if (Math.Abs(a[row, col]) > Math.Abs(a[pivot, col])) pivot = row;
            if (Math.Abs(a[pivot, col]) < 1e-300)
                return null;
            for (var j = 0; j < 4; j++) (a[col, j], a[pivot, j]) = (a[pivot, j], a[col, j]);
            for (var row = 0; row < 3; row++)
            {
                if (row == col) continue;
                var f = a[row, col] / a[col, col];
                for (var j = col; j < 4; j++) a[row, j] -= f * a[col, j];
            }
        }
        return [a[0, 3] / a[0, 0], a[1, 3] / a[1, 1], a[2, 3] / a[2, 2]];
    }
}
