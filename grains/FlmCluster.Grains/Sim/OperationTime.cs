namespace FlmCluster.Grains.Sim;

/// <summary>
/// When a call to a job's ranks was issued, carried with the call (Orleans request context): the job's clock and
/// the wall clock at that moment. Ranks whose work is modelled start it at the job's time of issue, so that the
/// ranks of one step, however many and in whatever order they run, model it once.
/// </summary>
public static class OperationTime
{
    private const string ClockKey = "flm.issued.clock";
    private const string WallKey = "flm.issued.wall";

    /// <summary>Stamps the calls made from here on in this flow (a coordinator before it calls its ranks).</summary>
    public static void Stamp(DateTimeOffset clockNow)
    {
        RequestContext.Set(ClockKey, clockNow.UtcTicks);
        RequestContext.Set(WallKey, DateTimeOffset.UtcNow.UtcTicks);
    }

    /// <summary>How far the issuer's clock was ahead of the wall clock when the call was issued (its modelled time then), or null without a stamp.</summary>
    public static TimeSpan? ModelledAtIssue =>
        RequestContext.Get(ClockKey) is long clock && RequestContext.Get(WallKey) is long wall ? TimeSpan.FromTicks(Math.Max(0, clock - wall)) : null;
}
