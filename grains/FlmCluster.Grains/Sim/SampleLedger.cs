using System.Globalization;

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
/// remains is the trajectory the job kept. Kept by simulations, for checking sample accounting. A silo process of a
/// simulated cluster also appends every report to a journal file (one line each, written through to the kernel at
/// once, so a kill -9 loses none); <see cref="Replay"/> merges the journals of all silos into one ledger, and since
/// merging reports does not depend on their order, it is the ledger one process would have kept.
/// </summary>
public sealed class SampleLedger : IDisposable
{
    private readonly Lock _lock = new();
    private readonly Dictionary<string, Dictionary<long, StepSamples>> _jobs = [];
    private readonly StreamWriter? _journal;

    /// <param name="journal">A file to append every report to (created if missing), or null to keep them in memory only.</param>
    public SampleLedger(string? journal = null)
    {
        if (journal is not null)
            _journal = new StreamWriter(new FileStream(journal, FileMode.Append, FileAccess.Write, FileShare.Read)) { AutoFlush = true };
    }

    public void Record(string job, int incarnation, long step, int dataParallel, long first, int samples)
    {
        lock (_lock)
        {
            Apply(job, incarnation, step, dataParallel, first, samples);
            // One write per report: a whole line reaches the kernel or nothing does.
            _journal?.Write(string.Create(CultureInfo.InvariantCulture, $"{job}\t{incarnation}\t{step}\t{dataParallel}\t{first}\t{samples}\n"));
        }
    }

    private void Apply(string job, int incarnation, long step, int dataParallel, long first, int samples)
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

    /// <summary>The job's steps by number.</summary>
    public IReadOnlyDictionary<long, StepSamples> Of(string job)
    {
        lock (_lock)
            return _jobs.TryGetValue(job, out var steps) ? new Dictionary<long, StepSamples>(steps) : [];
    }

    /// <summary>
    /// The ledger the journals add up to. A line that is not a whole report — only the last line of a journal whose
    /// writer was killed in the middle of it can be — is an <see cref="InvalidDataException"/> anywhere else.
    /// </summary>
    public static SampleLedger Replay(IEnumerable<string> journals)
    {
        var ledger = new SampleLedger();
        foreach (var path in journals)
        {
            var lines = File.ReadAllText(path).Split('\n');
            // The text after the last newline is a report cut short by a kill, or nothing.
            for (var i = 0; i < lines.Length - 1; i++)
            {
                var f = lines[i].Split('\t');
                if (f.Length != 6 || !int.TryParse(f[1], CultureInfo.InvariantCulture, out var incarnation) || !long.TryParse(f[2], CultureInfo.InvariantCulture, out var step)
                    || !int.TryParse(f[3], CultureInfo.InvariantCulture, out var dp) || !long.TryParse(f[4], CultureInfo.InvariantCulture, out var first)
                    || !int.TryParse(f[5], CultureInfo.InvariantCulture, out var samples))
                    throw new InvalidDataException($"{path}, line {i + 1}: '{lines[i]}' is not a sample report (job, incarnation, step, replicas, first sample, samples)");
                ledger.Apply(f[0], incarnation, step, dp, first, samples);
            }
        }
        return ledger;
    }

    public void Dispose() => _journal?.Dispose();
}
