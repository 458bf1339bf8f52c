using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Jobs;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Grains.Workers;

/// <summary>What a GPU's worker asks of the rank it holds, whatever its device: train, evaluate, copy its state.</summary>
public interface IRankExecutor : IDisposable
{
    /// <summary>Fingerprint of the data the rank reads (recorded in checkpoints).</summary>
    string DataFingerprint { get; }

    /// <summary>Bytes of the rank's parameters and their gradients on its device.</summary>
    long ParameterBytes { get; }

    /// <summary>Bytes of the rank's optimizer state on its device.</summary>
    long OptimizerBytes { get; }

    RankStepReport TrainStep(StepPlan plan);

    /// <summary>Σ token losses of the global batch at <paramref name="firstSample"/> without training (every rank of the job must be asked).</summary>
    (double LossSum, long Tokens) EvaluateLoss(long firstSample, double maskValue);

    /// <summary>
    /// Copies the rank's state to host memory now, between steps: its shard of a checkpoint (parameters once per
    /// stage, its optimizer shard), written to storage or kept as an in-memory replica.
    /// </summary>
    IRankCopy Copy();
}

/// <summary>A rank's state copied to host memory; written or serialized in the background while training goes on.</summary>
public interface IRankCopy : IDisposable
{
    /// <summary>Writes the copy as the rank's shard of a checkpoint in <paramref name="directory"/> (durably).</summary>
    Task<WrittenShard> WriteShard(string directory);

    /// <summary>
    /// The copy as an in-memory replica of <paramref name="step"/>: the bytes of its checkpoint shard, in chunks of at
    /// most <paramref name="chunkBytes"/>, and the shard's record for the replicas' manifest.
    /// </summary>
    Task<(ChunkedBytes Bytes, WrittenShard Shard)> Serialize(long step, int chunkBytes);
}

/// <summary>
/// What a rank is built from: the worker, its assignment, the job, and the in-memory replicas it restores from
/// (when it does), as a checkpoint whose shards are fetched when first read.
/// </summary>
public sealed record RankSetup(string Worker, WorkerAssignment Assignment, ResolvedJob Job, JobConfig StageJob, ParallelLayout Layout, ICollectives Comm, CheckpointReader? Replicas);

/// <summary>A built rank, with how long building its model slice and loading its state took.</summary>
public sealed record BuiltRank(IRankExecutor Rank, TimeSpan Build, TimeSpan Restore);

/// <summary>
/// Builds the ranks of this server's devices — chosen by the server's device kind (<see cref="DeviceSpec"/>):
/// TorchSharp on cpu and cuda devices, the cost model on sim devices.
/// </summary>
public interface IRankExecutors
{
    /// <summary>Where a worker's rank work runs.</summary>
    IRankThread CreateThread(string worker);

    /// <summary>Builds a rank and loads its state as the assignment says (on the worker's rank thread).</summary>
    BuiltRank Build(RankSetup setup);

    /// <summary>Whether the devices move real bytes, so that a data-plane probe means something.</summary>
    bool HasDataPlane { get; }
}
