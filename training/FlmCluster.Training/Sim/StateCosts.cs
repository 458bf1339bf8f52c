using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Training.Sim;

/// <summary>
/// Modelled times of moving one rank's state — what the engine moves, over the hardware's links: a snapshot to host
/// memory (the GPU's share of PCIe), checkpoint shards to and from the shared storage (all ranks at once, so at the
/// storage's aggregate bandwidth), in-memory replicas over one GPU's network adapter.
/// </summary>
public sealed class StateCosts(ModelConfig model, ParallelLayout layout, int stage, string precision, SimCluster cluster)
{
    private readonly int _element = StepCostModel.ElementBytes(precision);

    /// <summary>Bytes per parameter of fp32 master weights (for bf16 parameters) and Adam's two moments.</summary>
    public int OptimizerBytesPerParameter => _element == 8 ? 16 : _element == 2 ? 12 : 8;

    public long Parameters { get; } = MemoryPlanner.RankParameters(model, layout, stage);

    /// <summary>What this rank copies: its optimizer shard, and its parameters when it is data-parallel rank 0 or restores itself alone.</summary>
    public double RankBytes(bool parameters) => (parameters ? (double)Parameters * _element : 0) + (double)Parameters * OptimizerBytesPerParameter / layout.Dp;

    /// <summary>A checkpoint of the whole job: every parameter once, every optimizer shard once.</summary>
    public double CheckpointBytes => (double)model.ParameterCount * (_element + OptimizerBytesPerParameter);

    /// <summary>Copying <paramref name="bytes"/> between the GPU and host memory.</summary>
    public double HostCopySeconds(double bytes) => bytes / cluster.Hardware.HostCopyBandwidth;

    /// <summary>Writing a whole checkpoint to the shared storage.</summary>
    public double CheckpointWriteSeconds => CheckpointBytes / cluster.Hardware.StorageWriteBandwidth;

    /// <summary>
    /// Every rank loading its state from a checkpoint of <paramref name="saved"/>'s shape at once: each reads its
    /// parameter slices (so every data-parallel replica reads them) and its optimizer shard.
    /// </summary>
    public double CheckpointReadSeconds(ModelConfig saved) =>
        ((double)saved.ParameterCount * _element * layout.Dp + (double)saved.ParameterCount * OptimizerBytesPerParameter) / cluster.Hardware.StorageReadBandwidth;

    /// <summary>Sending a replica of <paramref name="bytes"/> to a peer on another server.</summary>
    public double NetworkSeconds(double bytes) => bytes / cluster.Network().Bandwidth;
}

/// <summary>
/// The loss a simulated rank reports: Chinchilla's fitted law L(N, D) = E + A/N^α + B/D^β (Hoffmann et al. 2022,
/// "Training Compute-Optimal Large Language Models": E 1.69, A 406.4, B 410.7, α 0.34, β 0.28) at the model's
/// parameters and the tokens trained so far. Not a trained loss: it gives the coordinator's loss checks and growth
/// reports finite, plausible numbers. While growth masks ramp, N moves from the old model's size to the new.
/// </summary>
public static class ModelledLoss
{
    public static double At(double parameters, double tokens) =>
        1.69 + 406.4 / Math.Pow(parameters, 0.34) + 410.7 / Math.Pow(Math.Max(tokens, 1), 0.28);
}
