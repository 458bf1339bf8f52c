using FlmCluster.Training.Config;
using FlmCluster.Training.Growth;

namespace FlmCluster.Training.Parallel;

/// <summary>
/// Fitting a job onto fewer GPUs after servers are lost: fewer data-parallel replicas, the same tensor and
/// pipeline split, the same global batch (more micro-batches per replica, none larger than before). The
/// samples of every step stay the same, so training continues the same trajectory up to rounding.
/// </summary>
public static class ElasticLayout
{
    /// <summary>The layout with the most replicas that fits in <paramref name="maxWorld"/> GPUs, or null.</summary>
    public static LayoutConfig? Fit(LayoutConfig layout, int globalBatch, int maxWorld)
    {
        var microBatchSize = globalBatch / (layout.Dp * layout.MicroBatches);
        for (var dp = layout.Dp; dp >= 1; dp--)
        {
            if (dp * layout.Tp * layout.Pp > maxWorld || globalBatch % dp != 0)
                continue;
            var perReplica = globalBatch / dp;
            for (var m = layout.MicroBatches; m <= perReplica; m++)
                if (perReplica % m == 0 && perReplica / m <= microBatchSize)
                    return layout with { Dp = dp, MicroBatches = m };
        }
        return null;
    }

    /// <summary>The job with every stage's layout fitted into <paramref name="maxWorld"/> GPUs, or null when one cannot be.</summary>
    public static JobConfig? Fit(JobConfig job, int maxWorld)
    {
        var stages = GrowthSchedule.Resolve(job);
        var layouts = stages.Select(s => Fit(s.Job.Layout, s.Job.Train.GlobalBatch, maxWorld)).ToList();
        if (layouts.Any(l => l is null))
            return null;
        var fitted = job.Stages.Count == 0
            ? job with { Layout = layouts[0]! }
            : job with { Layout = layouts[0]!, Stages = [.. job.Stages.Select((s, i) => s with { Layout = layouts[i] })] };
        try
        {
            return JobValidator.Validate(fitted);
        }
        catch (FlmUserException)
        {
            return null;
        }
    }
}
