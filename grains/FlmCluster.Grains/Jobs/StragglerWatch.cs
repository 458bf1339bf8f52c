using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Config;

namespace FlmCluster.Grains.Jobs;

/// <summary>
/// Per-rank compute time (a step's time on the device less its time in collectives, which is where the others
/// wait for a slow one) over the last recovery.straggler_window steps. A rank whose median is more than
/// recovery.straggler_factor times the median of the other ranks', and at least recovery.straggler_min_ms slower,
/// is a straggler. In memory, for the current incarnation.
/// </summary>
public sealed class StragglerWatch
{
    private readonly Dictionary<int, Queue<double>> _compute = [];
    private readonly HashSet<int> _reported = [];
    private int _incarnation = -1;

    /// <summary>
    /// Adds a committed step's reports; returns the ranks newly found straggling (each once per incarnation) with
    /// their median and the median rank's, in ms.
    /// </summary>
    public IReadOnlyList<(int Rank, double Median, double Typical)> Observe(int incarnation, IReadOnlyList<WorkerStepReport> reports, RecoveryConfig config)
    {
        if (incarnation != _incarnation)
        {
            _compute.Clear(); // other workers, or rebuilt ones: start over
            _reported.Clear();
            _incarnation = incarnation;
        }
        if (config.StragglerFactor <= 0)
            return [];
        foreach (var report in reports)
        {
            if (!_compute.TryGetValue(report.Rank, out var times))
                _compute[report.Rank] = times = new Queue<double>();
            times.Enqueue(Math.Max(0, report.ElapsedMs - report.CommMs));
            while (times.Count > config.StragglerWindow)
                times.Dequeue();
        }
        if (_compute.Count < 2 || _compute.Values.Any(t => t.Count < config.StragglerWindow))
            return [];
        // Each rank against the median of the others: with few ranks a straggler would pull the median up itself.
        // The ranks' medians are sorted once; the median without one of them is read off that order (n log n in
        // all, not a sort per rank: at hundreds of ranks this runs every step).
        var medians = _compute.Select(kv => (Rank: kv.Key, Median: Median(kv.Value))).OrderBy(m => m.Median).ToList();
        var sorted = medians.Select(m => m.Median).ToArray();
        return medians.Select((m, i) => (m.Rank, m.Median, Typical: MedianWithout(sorted, i)))
            .Where(r => r.Median > config.StragglerFactor * r.Typical && r.Median - r.Typical >= config.StragglerMinMs && _reported.Add(r.Rank)).OrderBy(r => r.Rank).ToList();
    }

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        return MedianWithout(sorted, -1);
    }

    /// <summary>The median of <paramref name="sorted"/> leaving out the element at <paramref name="skip"/> (−1: none).</summary>
    private static double MedianWithout(double[] sorted, int skip)
    {
        var count = skip < 0 ? sorted.Length : sorted.Length - 1;
        double At(int j) => skip >= 0 && j >= skip ? sorted[j + 1] : sorted[j];
        return count % 2 == 1 ? At(count / 2) : (At(count / 2 - 1) + At(count / 2)) / 2;
    }
}
