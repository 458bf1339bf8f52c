using FlmCluster.Training.Config;
using FlmCluster.Training.Growth;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Training.Sim;

/// <summary>A stage as the cost model sees it: its model, layout, batch, and the card's throughput to match.</summary>
public sealed record FitTarget(string Name, ModelConfig Model, ParallelLayout Layout, int GlobalBatch, double TflopsPerGpu);

/// <summary>
/// Fits <see cref="CostConstants"/> to FLM-101B's published throughputs: a grid over compute efficiency
/// (0.400 … 0.800 by 0.005) and link efficiency (0.50 … 1.00 by 0.05), choosing the pair whose worst relative
/// TFLOP/s error over the three stages is smallest (ties: the smaller summed squared error).
/// </summary>
public static class CostModelFit
{
    /// <summary>The three stages of the <c>flm-101b</c> preset with the card's throughput.</summary>
    public static IReadOnlyList<FitTarget> Flm101bTargets()
    {
        var stages = GrowthSchedule.Resolve(JobValidator.Validate(Presets.Get("flm-101b")));
        return stages.Select(s => new FitTarget(s.Name, s.Job.Model, ParallelLayout.FromConfig(s.Job.Layout), s.Job.Train.GlobalBatch,
            PublishedSchedule.Flm101b.Single(p => p.Name == s.Name).TflopsPerGpu)).ToList();
    }

    /// <summary>Each target's relative error (modelled / published − 1) under <paramref name="constants"/>.</summary>
    public static IReadOnlyList<double> Errors(IReadOnlyList<FitTarget> targets, ClusterHardware hardware, CostConstants constants)
    {
        var cluster = new SimCluster(hardware, constants);
        return targets.Select(t => StepCostModel.For(t.Model, t.Layout, t.GlobalBatch, "bf16", cluster).TflopsPerGpu / t.TflopsPerGpu - 1).ToList();
    }

    public static (CostConstants Constants, IReadOnlyList<double> Errors) Fit(IReadOnlyList<FitTarget> targets, ClusterHardware hardware)
    {
        (CostConstants, IReadOnlyList<double>, double, double)? best = null;
        for (var c = 400; c <= 800; c += 5)
            for (var l = 50; l <= 100; l += 5)
            {
                var constants = new CostConstants(c / 1000.0, l / 100.0);
                var errors = Errors(targets, hardware, constants);
                var worst = errors.Max(Math.Abs);
                var squares = errors.Sum(e => e * e);
                if (best is not { } b || worst < b.Item3 - 1e-12 || (Math.Abs(worst - b.Item3) <= 1e-12 && squares < b.Item4))
                    best = (constants, errors, worst, squares);
            }
        return (best!.Value.Item1, best.Value.Item2);
    }
}
