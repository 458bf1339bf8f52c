namespace FlmCluster.Grains.Sim;

/// <summary>The samples one step trained, as the data-parallel replicas of its latest incarnation reported them.</summary>
/// <param name="Replicas">How many replicas reported.</param>
/// <param name="DataParallel">How many replicas the step had.</param>
/// <param name="First">The lowest sample index any replica trained.</param>
/// <param name="End">One past the highest.</param>
/// <param name="Samples">Samples trained, summed over replicas.</param>
public sealed record StepSamples(int Incarnation, int Replicas, int DataParallel, long First, long End, long Samples);

/// <summary>
/// Which samples every step of a job trained: each data-parallel replica's first rank (tensor rank 0 of the first
/// pipeline stage) reports its share; a later incarnation's report of a step replaces an earlier one's, so what
/// remains is the trajectory the job kept. Kept by in-process simulations, for checking sample accounting.
/// </summary>
public sealed class SampleLedger
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, Dictionary<long, StepSamples>> _jobs = [];

    public void Record(string job, int incarnation, long step, int dataParallel, long first, int samples)
    {
        lock (_lock)
        {
            if (!_jobs.TryGetValue(job, out var steps))
                _jobs[job] = steps = [];
            var mine = new StepSamples(incarnation, 1, dataParallel, first, first + samples, samples);
            if (!steps.TryGetValue(step, out var seen) || seen.Incarnation < incarnation)
                steps[step] = mine;
            else if (seen.Incarnation == incarnation)
                steps[step] = seen with
                {
                    Replicas = seen.Replicas + 1, First = Math.Min(seen.First, first), End = Math.Max(seen.End, first + samples), Samples = seen.Samples + samples,
                };
        }
    }

    /// <summary>The job's steps by number.</summary>
    public IReadOnlyDictionary<long, StepSamples> Of(string job)
    {
        lock (_lock)
            return _jobs.TryGetValue(job, out var steps) ? new Dictionary<long, StepSamples>(steps) : [];
    }
}
