using System.Collections.Concurrent;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Workers;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Parallel;
using FlmCluster.Training.Sim;

namespace FlmCluster.Grains.Sim;

/// <summary>A simulated GPU cannot hold what its rank needs (the engine's memory planner says so), as a real one would fail to allocate it.</summary>
public sealed class SimulatedOutOfMemoryException(string message) : Exception(message);

/// <summary>
/// Ranks on simulated GPUs (<c>sim:N</c>): no tensors, the real protocol. A rank checks that its state fits the
/// GPU's memory, takes the modelled time of each step (its pipeline stage's share of <see cref="StepCostModel"/>),
/// evaluation, snapshot, checkpoint write, replica and restore on the virtual clock, and writes real (small)
/// checkpoint shards and replicas so that the coordinator's commit, verification and restore run as they do on
/// real devices. Its work runs inline: it never blocks.
/// </summary>
public sealed class SimRankExecutors(FlmNodeOptions node) : IRankExecutors
{
    private readonly FlmSimulation _sim = node.Simulation ?? throw new InvalidOperationException($"server {node.Node} has sim devices but no simulation");
    private readonly ConcurrentDictionary<(string Job, int Stage, LayoutConfig Layout), StepCost> _costs = new();

    public IRankThread CreateThread(string worker) => new InlineThread();

    public bool HasDataPlane => false;

    public BuiltRank Build(RankSetup setup)
    {
        var a = setup.Assignment;
        var job = setup.StageJob;
        var layout = setup.Layout;
        var coords = layout.CoordsOf(a.Rank);
        var cluster = _sim.Cluster;
        var microBatch = layout.MicroBatchSize(job.Train.GlobalBatch);
        var memory = MemoryPlanner.ForStage(job.Model, layout, coords.Pp, job.Train.Precision, "cuda");
        var state = memory.TotalDistributed;
        var activations = MemoryPlanner.ActivationBytes(job.Model, layout, coords.Pp, microBatch, cluster.Recompute);
        if (state + activations > cluster.Hardware.DeviceMemoryBytes)
            throw new SimulatedOutOfMemoryException($"out of memory on {setup.Worker} ({cluster.Hardware.Name}): rank {a.Rank} (stage {coords.Pp} of layout {layout}) needs " +
                $"{state / 1e9:0.0} GB of state and {activations / 1e9:0.0} GB of activations, the GPU has {cluster.Hardware.DeviceMemoryBytes / 1e9:0.0} GB");
        var cost = _costs.GetOrAdd((setup.Job.Fingerprint, a.Stage, job.Layout), _ => StepCostModel.For(job.Model, layout, job.Train.GlobalBatch, job.Train.Precision, cluster));
        var costs = new StateCosts(job.Model, layout, coords.Pp, job.Train.Precision, cluster);
        var restore = a.Rebuild.Kind switch
        {
            RebuildKind.Checkpoint => costs.CheckpointReadSeconds(SimCheckpoint.Open(a.Rebuild.Checkpoint!, a.Stage, setup.Job).Model),
            RebuildKind.Growth => costs.CheckpointReadSeconds(SimCheckpoint.Open(a.Rebuild.Checkpoint!, a.Stage - 1, setup.Job).Model),
            RebuildKind.Replicas => ReplicaSeconds(setup, costs),
            _ => 0,
        };
        var rank = new SimRank(_sim, setup, cost, costs, memory);
        rank.Model(restore);
        return new BuiltRank(rank, TimeSpan.Zero, TimeSpan.FromSeconds(restore));
    }

    /// <summary>
    /// Loading this rank's state from the in-memory replicas: from host memory when this worker kept its own, else
    /// over the network from a peer. The replicas' manifest must be of simulated shards, with this rank's among them
    /// when the layout is the one they were taken in. (The shard's bytes are not read here: the fetch blocks, and a
    /// simulated rank's work runs on its grain's turn.)
    /// </summary>
    private static double ReplicaSeconds(RankSetup setup, StateCosts costs)
    {
        var a = setup.Assignment;
        var source = a.Rebuild.Replicas!;
        var manifest = setup.Replicas!.Manifest;
        if (!SimCheckpoint.IsSimulated(manifest))
            throw new InvalidCheckpointException($"the in-memory replicas of step {source.Step} were not taken by simulated devices");
        if (manifest.Layout is { } taken && (taken.Dp, taken.Tp, taken.Pp) == (setup.Layout.Dp, setup.Layout.Tp, setup.Layout.Pp) && !manifest.Shards.Any(s => s.Rank == a.Rank && s.File == SimCheckpoint.ShardFile(a.Rank)))
            throw new ReplicaUnavailableException(a.Rank, source.Step, $"the in-memory replicas of step {source.Step} have no shard of rank {a.Rank}");
        var own = source.Holders[a.Rank].FirstOrDefault() == setup.Worker;
        var bytes = costs.RankBytes(parameters: true);
        return costs.HostCopySeconds(bytes) + (own ? 0 : costs.NetworkSeconds(bytes));
    }
}

/// <summary>One simulated rank: its stage's modelled step, and the modelled cost of moving its state.</summary>
internal sealed class SimRank(FlmSimulation sim, RankSetup setup, StepCost cost, StateCosts costs, RankMemory memory) : IRankExecutor
{
    private readonly RankCoords _coords = setup.Layout.CoordsOf(setup.Assignment.Rank);
    private readonly JobConfig _job = setup.StageJob;
    private readonly int _share = setup.StageJob.Train.GlobalBatch / setup.Layout.Dp;

    /// <summary>The rank's data reads nothing: its fingerprint names the data it stands for.</summary>
    public string DataFingerprint { get; } = Fingerprint(setup.StageJob);

    public long ParameterBytes => memory.WeightBytes + memory.GradientBytes;

    public long OptimizerBytes => memory.OptimizerBytesDistributed;

    private bool ReportsLoss => _coords.Pp == setup.Layout.Pp - 1 && _coords.Tp == 0;

    /// <summary>The operation that began at the call's time of issue takes <paramref name="seconds"/>: the clock runs at least to its end.</summary>
    public TimeSpan Model(double seconds)
    {
        var start = OperationTime.ModelledAtIssue ?? sim.Clock.Modelled;
        var end = start + TimeSpan.FromSeconds(seconds);
        sim.Clock.ModelUntil(end);
        return end;
    }

    public RankStepReport TrainStep(StepPlan plan)
    {
        var stage = cost.Stages[_coords.Pp];
        Model(stage.Total);
        var first = plan.FirstSample + (long)_coords.Dp * _share;
        if (_coords.Tp == 0 && _coords.Pp == 0)
            sim.Samples?.Record(setup.Assignment.JobId, setup.Assignment.Incarnation, plan.Step, setup.Layout.Dp, first, _share);
        var (loss, tokens) = Loss(first, plan.MaskValue);
        return new RankStepReport(plan.Step, setup.Assignment.Rank, ReportsLoss, loss, tokens, 0, false,
            TimeSpan.FromSeconds(stage.Total), TimeSpan.FromSeconds(stage.Communication + stage.Bubble), (long)cost.CommBytes[_coords.Pp],
            TimeSpan.FromSeconds(stage.Bubble)); // as on a real rank: time in communication with the pipeline's wait in it
    }

    public (double LossSum, long Tokens) EvaluateLoss(long firstSample, double maskValue)
    {
        Model(StepCostModel.EvaluationSeconds(_job.Model, setup.Layout, _job.Train.GlobalBatch, _job.Train.Precision, sim.Cluster));
        return Loss(firstSample + (long)_coords.Dp * _share, maskValue);
    }

    /// <summary>The modelled loss of this replica's share (<see cref="ModelledLoss"/>), reported by the ranks that report losses.</summary>
    private (double LossSum, long Tokens) Loss(long first, double maskValue)
    {
        if (!ReportsLoss)
            return (0, 0);
        var stage = setup.Assignment.Stage;
        var now = (double)_job.Model.ParameterCount;
        var before = stage > 0 ? setup.Job.Stages[stage - 1].Job.Model.ParameterCount : now;
        var parameters = before + maskValue * (now - before);
        var tokens = (long)_share * _job.Model.SeqLen;
        return (ModelledLoss.At(parameters, (double)(first + _share) * _job.Model.SeqLen) * tokens, tokens);
    }

    public IRankCopy Copy()
    {
        var bytes = costs.RankBytes(_coords.Dp == 0);
        var copied = Model(costs.HostCopySeconds(bytes));
        // The background work starts when this rank's copy is done, on the clock's time line.
        var copiedAt = sim.Clock.GetUtcNow() + (copied - sim.Clock.Modelled);
        return new SimCopy(sim.Clock, setup, bytes, copiedAt, costs);
    }

    public void Dispose()
    {
    }

    private static string Fingerprint(JobConfig job) =>
        "sim-" + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes($"{job.Tokenizer}|{string.Join("|", job.Data.Paths)}|{job.Data.Seed}")))[..16];
}

/// <summary>A simulated rank's state in host memory: a small real shard, written or kept as a replica when the modelled write or send would be done.</summary>
internal sealed class SimCopy(VirtualClock clock, RankSetup setup, double bytes, DateTimeOffset copiedAt, StateCosts costs) : IRankCopy
{
    public async Task<WrittenShard> WriteShard(string directory)
    {
        var (content, shard) = Shard();
        CheckpointStore.WriteDurably(Path.Combine(directory, shard.Shard.File), s => s.Write(content));
        await clock.WhenReached(copiedAt + TimeSpan.FromSeconds(costs.CheckpointWriteSeconds));
        return shard;
    }

    public async Task<(ChunkedBytes Bytes, WrittenShard Shard)> Serialize(long step, int chunkBytes)
    {
        var (content, shard) = Shard();
        await clock.WhenReached(copiedAt + TimeSpan.FromSeconds(costs.NetworkSeconds(bytes)));
        return (new ChunkedBytes([content]), shard);
    }

    /// <summary>The shard's content and its record: which rank of which layout, and the bytes it stands for.</summary>
    private (byte[] Content, WrittenShard Shard) Shard()
    {
        var a = setup.Assignment;
        var content = JsonSerializer.SerializeToUtf8Bytes(new SimShard(SimCheckpoint.Format, a.JobId, a.Rank, a.Stage, setup.Layout.ToString(), (long)bytes));
        return (content, new WrittenShard(new ShardRecord(SimCheckpoint.ShardFile(a.Rank), a.Rank, content.Length, Convert.ToHexStringLower(SHA256.HashData(content))), []));
    }

    public void Dispose()
    {
    }
}

/// <summary>What a simulated rank's checkpoint shard file holds: which rank of which layout, and the bytes it stands for.</summary>
internal sealed record SimShard(string Format, string Job, int Rank, int Stage, string Layout, long Bytes);

/// <summary>
/// Checkpoints of simulated ranks: the real manifest and commit protocol, with one small JSON shard per rank
/// (<c>shard-NNNNN.sim.json</c>) and no tensors. Real devices refuse them (they hold no parameters), and
/// simulated ones refuse checkpoints of real tensors.
/// </summary>
internal static class SimCheckpoint
{
    public const string Format = "flmcluster-sim-shard";
    private const string Suffix = ".sim.json";

    public static string ShardFile(int rank) => $"shard-{rank:D5}{Suffix}";

    /// <summary>Whether every shard of a manifest is a simulated rank's.</summary>
    public static bool IsSimulated(CheckpointManifest manifest) =>
        manifest.Shards.Count > 0 && manifest.Shards.All(s => s.File.EndsWith(Suffix, StringComparison.Ordinal));

    /// <summary>Opens a checkpoint (manifest, shard sizes) and checks it was written by simulated ranks at <paramref name="stage"/>; returns that stage's model.</summary>
    public static (CheckpointReader Reader, ModelConfig Model) Open(string directory, int stage, Training.Jobs.ResolvedJob job)
    {
        var reader = CheckpointReader.Open(directory);
        if (!IsSimulated(reader.Manifest))
            throw new InvalidCheckpointException($"'{directory}' was not written by simulated devices; sim devices restore only their own checkpoints");
        if (reader.Manifest.Stage != stage || stage < 0 || stage >= job.Stages.Count)
            throw new InvalidCheckpointException($"'{directory}' is a checkpoint of stage {reader.Manifest.Stage}, not of stage {stage} of the job");
        return (reader, job.Stages[stage].Job.Model);
    }
}
