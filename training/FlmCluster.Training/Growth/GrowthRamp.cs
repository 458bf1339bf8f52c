namespace FlmCluster.Training.Growth;

/// <summary>The mask value c after a growth event: 0 at the first step, rising by 1/R per step, exactly 1 (masks removed) after R steps.</summary>
public sealed record GrowthRamp(long Steps)
{
    public double ValueAt(long stepsSinceGrowth) =>
        Steps <= 0 || stepsSinceGrowth >= Steps ? 1.0 : (double)stepsSinceGrowth / Steps;
}
