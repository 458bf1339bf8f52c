using FlmCluster.Training.Config;

namespace FlmCluster.Training.Optim;

/// <summary>Linear warmup to the peak LR, then cosine, linear or no decay to min_lr.</summary>
public sealed class LrSchedule(OptimizerConfig config, long totalSteps)
{
    public long DecaySteps { get; } = config.DecaySteps > 0 ? config.DecaySteps : totalSteps;

    /// <summary>Learning rate for 0-based step <paramref name="step"/> (the (step+1)-th update).</summary>
    public double At(long step)
    {
        var t = step + 1;
        if (config.WarmupSteps > 0 && t <= config.WarmupSteps)
            return config.Lr * t / config.WarmupSteps;
        if (config.Decay == "constant" || DecaySteps <= config.WarmupSteps)
            return config.Lr;
        var progress = Math.Clamp((double)(t - config.WarmupSteps) / (DecaySteps - config.WarmupSteps), 0, 1);
        var span = config.Lr - config.MinLr;
        return config.Decay == "linear"
            ? config.Lr - span * progress
            : config.MinLr + span * 0.5 * (1 + Math.Cos(Math.PI * progress));
    }
}
