using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;

namespace FlmCluster.Training.Jobs;

/// <summary>A step whose result must not be kept: why, and how many batches (ending at it) to skip when it is done again.</summary>
public sealed record StepAnomaly(string Reason, int SkipBatches);

/// <summary>
/// Watches each step's result before it is committed: a non-finite loss or gradient norm (the optimizer skipped
/// the update), or a loss spike against the recent losses (recovery.spike_ratio / spike_z over spike_window).
/// </summary>
public static class LossWatch
{
    /// <param name="recent">Losses of the committed steps before this one, oldest first.</param>
    public static StepAnomaly? Check(StepSummary step, IReadOnlyList<double> recent, RecoveryConfig config)
    {
        if (!double.IsFinite(step.Loss) || !double.IsFinite(step.GradNorm) || step.Skipped)
            return new StepAnomaly($"non-finite {(double.IsFinite(step.Loss) ? "gradient norm" : "loss")} at step {step.Step} (loss {step.Loss}, gradient norm {step.GradNorm})", 1);
        if (config.SpikeRatio <= 0 && config.SpikeZ <= 0)
            return null;
        var window = recent.TakeLast(config.SpikeWindow).Where(double.IsFinite).ToList();
        if (window.Count < Math.Max(2, config.SpikeWindow / 2))
            return null;
        var mean = window.Average();
        var std = Math.Sqrt(window.Sum(l => (l - mean) * (l - mean)) / window.Count);
        if (config.SpikeRatio > 0 && step.Loss > config.SpikeRatio * mean)
            return new StepAnomaly($"loss spike at step {step.Step}: {step.Loss:0.0000} is {step.Loss / mean:0.00}× the mean {mean:0.0000} of the last {window.Count} steps (recovery.spike_ratio {config.SpikeRatio})", config.SpikeSkip);
        if (config.SpikeZ > 0 && std > 0 && (step.Loss - mean) / std > config.SpikeZ)
            return new StepAnomaly($"loss spike at step {step.Step}: {step.Loss:0.0000} is {(step.Loss - mean) / std:0.0} standard deviations above the mean {mean:0.0000} of the last {window.Count} steps (recovery.spike_z {config.SpikeZ})", config.SpikeSkip);
        return null;
    }
}
