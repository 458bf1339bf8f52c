using System.Diagnostics;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.DataPlane;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Jobs;
using FlmCluster.Training.Parallel;

namespace FlmCluster.Grains.Workers;

/// <summary>Ranks on real devices: a <see cref="RankTrainer"/> (TorchSharp) on a dedicated device thread.</summary>
public sealed class TorchRankExecutors(FlmNodeOptions node, SiloDatasets datasets, IEnumerable<IStepFaults> faults) : IRankExecutors
{
    public IRankThread CreateThread(string worker) => new DeviceThread(worker);

    public bool HasDataPlane => true;

    public BuiltRank Build(RankSetup setup)
    {
        var started = Stopwatch.GetTimestamp();
        var a = setup.Assignment;
        // Threads per rank from the server's device count, not from the workers active so far: a count that
        // changed with activation order would change how libtorch splits its reductions, and so the rounding.
        TorchEnvironment.ConfigureThreads(node.TorchThreads, Math.Max(1, node.Devices.Count));
        var data = datasets.For(setup.StageJob);
        var trainer = new RankTrainer(setup.StageJob, new RankGroups(setup.Layout, a.Rank), setup.Comm, data, setup.Job.GrowthShapeOf(a.Stage));
        foreach (var fault in faults)
            trainer.BeforeUpdate += (plan, rank) => fault.BeforeUpdate(setup.Worker, a.JobId, a.Rank, plan, rank);
        var built = Stopwatch.GetElapsedTime(started);
        try
        {
            var loading = Stopwatch.GetTimestamp();
            Load(trainer, setup, data.Fingerprint);
            return new BuiltRank(new TorchRank(trainer), built, Stopwatch.GetElapsedTime(loading));
        }
        catch
        {
            trainer.Dispose();
            throw;
        }
    }

    /// <summary>Loads the rank's state from where the assignment says.</summary>
    private static void Load(RankTrainer trainer, RankSetup setup, string dataFingerprint)
    {
        var a = setup.Assignment;
        switch (a.Rebuild.Kind)
        {
            case RebuildKind.Growth:
                CheckpointRestore.LoadGrown(trainer, CheckpointReader.Open(a.Rebuild.Checkpoint!), setup.Job.Job, setup.Job.Stages, a.Stage);
                break;
            case RebuildKind.Checkpoint:
                var reader = CheckpointReader.Open(a.Rebuild.Checkpoint!);
                new JobProgress(setup.Job).CheckResume(reader, dataFingerprint, stepsLeft: false);
                CheckpointRestore.Load(trainer, reader);
                break;
            case RebuildKind.Replicas:
                new JobProgress(setup.Job).CheckResume(setup.Replicas!, dataFingerprint, stepsLeft: false);
                CheckpointRestore.Load(trainer, setup.Replicas!);
                break;
        }
    }

    /// <summary>A TorchSharp rank as a worker's executor; disposing it disposes the trainer.</summary>
    public sealed class TorchRank(RankTrainer trainer) : IRankExecutor
    {
        public string DataFingerprint => trainer.DataFingerprint;

        public long ParameterBytes => trainer.Flat.Bytes * 2; // parameters and their gradients, same size

        public long OptimizerBytes => trainer.Optimizer.StateBytes;

        public RankStepReport TrainStep(StepPlan plan) => trainer.TrainStep(plan);

        public (double LossSum, long Tokens) EvaluateLoss(long firstSample, double maskValue) => trainer.EvaluateLoss(firstSample, maskValue);

        public IRankCopy Copy() => new TorchRankCopy(RankSnapshot.Capture(trainer));

        public void Dispose() => trainer.Dispose();
    }

    private sealed class TorchRankCopy(RankSnapshot snapshot) : IRankCopy
    {
        public Task<WrittenShard> WriteShard(string directory) => Task.Run(() => ShardWriter.Write(snapshot, directory));

        public Task<(ChunkedBytes Bytes, WrittenShard Shard)> Serialize(long step, int chunkBytes) => Task.Run(() => ShardWriter.Serialize(snapshot, chunkBytes));

        public void Dispose() => snapshot.Dispose();
    }
}
