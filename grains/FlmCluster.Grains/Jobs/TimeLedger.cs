using FlmCluster.Grains.Abstractions;

namespace FlmCluster.Grains.Jobs;

/// <summary>What a job's coordinator is spending time on now.</summary>
public enum TimeUse
{
    Queued,
    Startup,
    Step,
    CheckpointStall,
    Growth,
    Paused,
    Overhead,
    Detect,
    Decide,
    Allocate,
    Rebuild,
    FirstStep,
    Waiting,

    /// <summary>Work whose result was thrown away (a step that failed its check); counted as redone.</summary>
    Redone,
    Ended,
}

/// <summary>
/// Accounts every second of a job's life to one use (<see cref="TimeAccount"/>): the interval since the last
/// mark goes to the use that was current, then the next use starts. Committed steps count as productive; a
/// restore moves the steps it rolls back to redone (the productive time at each recovery point is recorded
/// with it). Persisted with the job, so the account survives the coordinator moving.
/// </summary>
[GenerateSerializer, Alias("flm.TimeLedger")]
public sealed class TimeLedger
{
    [Id(0)] public TimeUse Use { get; set; } = TimeUse.Queued;
    [Id(1)] public DateTimeOffset Mark { get; set; }
    [Id(2)] public Dictionary<TimeUse, double> Seconds { get; set; } = [];

    /// <summary>Seconds of committed steps along the trajectory (rolled back with a restore).</summary>
    [Id(3)] public double Productive { get; set; }

    [Id(4)] public double Redone { get; set; }

    /// <summary>Of the recovery rebuilds, the seconds workers spent loading state (the rest is building their slices).</summary>
    [Id(5)] public double Restore { get; set; }

    [Id(6)] public int Recoveries { get; set; }

    /// <summary>A recovery is under way until its first step commits: its phases are summed into this.</summary>
    [Id(7)] public Dictionary<TimeUse, double>? Current { get; set; }

    public void Start(DateTimeOffset now, TimeUse use)
    {
        Mark = now;
        Use = use;
    }

    /// <summary>
    /// Charges the time since the last mark to the current use (or to <paramref name="charge"/>), then starts
    /// <paramref name="next"/>. Returns the seconds charged.
    /// </summary>
    public double Spend(DateTimeOffset now, TimeUse next, TimeUse? charge = null)
    {
        var seconds = Math.Max(0, (now - Mark).TotalSeconds);
        var use = charge ?? Use;
        if (use == TimeUse.Step)
            Productive += seconds;
        else if (use == TimeUse.Redone)
            Redone += seconds;
        else if (use != TimeUse.Ended)
        {
            Seconds[use] = Seconds.GetValueOrDefault(use) + seconds;
            if (Current is not null && IsRecovery(use))
                Current[use] = Current.GetValueOrDefault(use) + seconds;
        }
        Mark = now;
        Use = next;
        return seconds;
    }

    /// <summary>Productive seconds at the job's recovery points, by step (the newest few).</summary>
    [Id(9)] public SortedDictionary<long, double> ProductiveAt { get; set; } = [];

    /// <summary>A recovery point (checkpoint or replicas) was taken at <paramref name="step"/>: remember the productive time there.</summary>
    public void RecordPoint(long step)
    {
        ProductiveAt[step] = Productive;
        while (ProductiveAt.Count > 32)
            ProductiveAt.Remove(ProductiveAt.Keys.First());
    }

    /// <summary>
    /// A restore rolled the job back to <paramref name="step"/>: the productive time after it becomes redone. (A
    /// point older than those remembered counts from the nearest one before it, or from the start.)
    /// </summary>
    public void RollBack(long step)
    {
        var at = ProductiveAt.LastOrDefault(p => p.Key <= step, new KeyValuePair<long, double>(0, 0)).Value;
        var back = Math.Max(0, Productive - at);
        Redone += back;
        Productive -= back;
        foreach (var later in ProductiveAt.Keys.Where(k => k > step).ToList())
            ProductiveAt.Remove(later);
    }

    /// <summary>A recovery begins (a failure surfaced): its phases are tracked until its first step commits.</summary>
    public void BeginRecovery() => Current ??= [];

    /// <summary>The recovery's first step committed: its phases (restore split from rebuild), or null when none was under way.</summary>
    public RecoveryTime? EndRecovery()
    {
        if (Current is not { } phases)
            return null;
        Recoveries++;
        double Of(TimeUse use) => phases.GetValueOrDefault(use);
        var time = new RecoveryTime(Of(TimeUse.Detect), Of(TimeUse.Decide), Of(TimeUse.Allocate), Of(TimeUse.Rebuild), CurrentRestore, Of(TimeUse.FirstStep), Of(TimeUse.Waiting), 1);
        Current = null;
        CurrentRestore = 0;
        return time;
    }

    /// <summary>Of the recovery's rebuild time just charged, <paramref name="seconds"/> were workers loading state.</summary>
    public void MoveToRestore(double seconds)
    {
        seconds = Math.Clamp(seconds, 0, Seconds.GetValueOrDefault(TimeUse.Rebuild));
        Seconds[TimeUse.Rebuild] = Seconds.GetValueOrDefault(TimeUse.Rebuild) - seconds;
        Restore += seconds;
        CurrentRestore += seconds;
        if (Current is not null)
            Current[TimeUse.Rebuild] = Current.GetValueOrDefault(TimeUse.Rebuild) - seconds;
    }

    /// <summary>Of the recovery under way, the seconds workers spent loading state.</summary>
    [Id(8)] public double CurrentRestore { get; set; }

    public TimeAccount Account()
    {
        double Of(TimeUse use) => Seconds.GetValueOrDefault(use);
        return new TimeAccount(Of(TimeUse.Queued), Of(TimeUse.Startup), Productive, Redone, Of(TimeUse.CheckpointStall), Of(TimeUse.Growth),
            Of(TimeUse.Paused), Of(TimeUse.Overhead),
            new RecoveryTime(Of(TimeUse.Detect), Of(TimeUse.Decide), Of(TimeUse.Allocate), Of(TimeUse.Rebuild), Restore, Of(TimeUse.FirstStep),
                Of(TimeUse.Waiting), Recoveries));
    }

    private static bool IsRecovery(TimeUse use) =>
        use is TimeUse.Detect or TimeUse.Decide or TimeUse.Allocate or TimeUse.Rebuild or TimeUse.FirstStep or TimeUse.Waiting;
}
