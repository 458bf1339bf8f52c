namespace FlmCluster.Grains.Tests;

/// <summary>Equality of losses within a relative tolerance (absolute below 1).</summary>
internal sealed class Tolerance(double epsilon) : IEqualityComparer<double>
{
    public bool Equals(double x, double y) => Math.Abs(x - y) <= epsilon * Math.Max(1, Math.Abs(x));
    public int GetHashCode(double obj) => 0;
}
