namespace FlmCluster.Training.Config;

/// <summary>
/// One stage of a growth schedule. Shape keys left out keep the previous stage's value (the first stage
/// starts from the job's <c>model</c>); optimizer and batch keys left out keep the job's. Moving from one stage
/// to the next grows the model by Masked Structural Growth.
/// </summary>
public sealed record StageConfig
{
    public string Name { get; init; } = "";

    public int? Layers { get; init; }
    public int? Hidden { get; init; }
    public int? Heads { get; init; }
    public int? Ffn { get; init; }
    public int? HeadSize { get; init; }

    /// <summary>Optimizer steps of the stage (or give <see cref="Tokens"/>).</summary>
    public long Steps { get; init; }

    /// <summary>Tokens of the stage: steps = round(tokens / (global_batch × seq_len)).</summary>
    public double Tokens { get; init; }

    /// <summary>Peak learning rate of the stage (each stage warms up again to its own peak).</summary>
    public double? Lr { get; init; }
    public double? MinLr { get; init; }
    public long? WarmupSteps { get; init; }

    /// <summary>Warmup in samples (as the FLM-101B card gives it): steps = round(samples / global_batch).</summary>
    public long? WarmupSamples { get; init; }

    public int? GlobalBatch { get; init; }
    public LayoutConfig? Layout { get; init; }

    /// <summary>Steps over which the growth masks ramp from 0 to 1 at the start of this stage.</summary>
    public long MaskRampSteps { get; init; } = 100;

    /// <summary><c>stack</c> or <c>interpolate</c>: where layers added at the start of this stage go.</summary>
    public string DepthPlacement { get; init; } = "stack";

    /// <summary><c>copy</c> or <c>random</c>: how layers added at the start of this stage are initialised.</summary>
    public string NewBlockInit { get; init; } = "copy";
}
