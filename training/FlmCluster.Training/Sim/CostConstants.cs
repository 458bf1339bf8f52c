namespace FlmCluster.Training.Sim;

/// <summary>
/// The cost model's fitted constants — the only numbers in it not taken from a specification. Fitted once to
/// FLM-101B's three published throughputs (162, 160, 165 TFLOP/s per GPU) by <see cref="CostModelFit"/>; all
/// three stages come out of the same values.
/// </summary>
/// <param name="ComputeEfficiency">Fraction of the GPU's dense peak its kernels sustain over a training step's FLOPs.</param>
/// <param name="LinkEfficiency">Fraction of a link's bandwidth a collective achieves (NCCL's bus bandwidth over the wire's).</param>
public sealed record CostConstants(double ComputeEfficiency, double LinkEfficiency)
{
    /// <summary>How many constants are fitted.</summary>
    public const int FittedCount = 2;

    /// <summary>The values fitted to the card (see <see cref="CostModelFit"/>; a test refits them).</summary>
    public static CostConstants Fitted { get; } = new(0.595, 0.95);

    public void Validate(string where)
    {
        if (!double.IsFinite(ComputeEfficiency) || ComputeEfficiency is <= 0 or > 1 || !double.IsFinite(LinkEfficiency) || LinkEfficiency is <= 0 or > 1)
            throw new FlmUserException($"{where}: compute and link efficiencies must be in (0, 1] (got {ComputeEfficiency}, {LinkEfficiency})");
    }
}

/// <summary>What the simulator models a cluster with: its hardware, the fitted constants, and whether activations are recomputed.</summary>
/// <param name="Recompute">Full activation recomputation: every micro-batch's forward runs again in its backward.</param>
public sealed record SimCluster(ClusterHardware Hardware, CostConstants Constants, bool Recompute = false)
{
    public static SimCluster Default { get; } = new(ClusterHardware.DgxA800, CostConstants.Fitted);

    /// <summary>The NVLink inside a server, as collectives achieve it.</summary>
    public Link Nvlink => new(Hardware.NvlinkBandwidth * Constants.LinkEfficiency, Hardware.NvlinkLatency);

    /// <summary>
    /// The network between servers as a collective's member achieves it, with <paramref name="adapters"/> adapters'
    /// bandwidth behind it (one: its own GPU's), never more than the NVLink that feeds them.
    /// </summary>
    public Link Network(double adapters = 1) =>
        new(Math.Min(Hardware.NetworkBandwidth * adapters, Hardware.NvlinkBandwidth) * Constants.LinkEfficiency, Hardware.NetworkLatency);

    /// <summary>The sustained compute rate of one GPU, FLOP/s.</summary>
    public double ComputeRate => Hardware.PeakFlops * Constants.ComputeEfficiency;
}
