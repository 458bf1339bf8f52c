using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;
using Orleans.TestingHost;

namespace FlmCluster.Grains.Tests;

/// <summary>Checkpoints written by workers and committed by the coordinator; resharding resume; restore after workers lose their state.</summary>
[Collection("Cluster jobs")]
public sealed class CheckpointJobTests : IAsyncLifetime
{
    private InProcessTestCluster _cluster = null!;
    private string _storage = "";
    private readonly string _checkpoints = Directory.CreateTempSubdirectory("flm-cluster-ckpt-").FullName;

    public async ValueTask InitializeAsync() => (_cluster, _storage) = await TestClusters.Start(2, 2, 0);

    public async ValueTask DisposeAsync()
    {
        await TestClusters.Stop(_cluster, _storage);
        Directory.Delete(_checkpoints, recursive: true);
    }

    private IClusterSchedulerGrain Scheduler => _cluster.Client.GetGrain<IClusterSchedulerGrain>("cluster");

    private JobConfig Job(int dp, int tp, int pp, long steps, string dir, long interval) => TestClusters.MicroJob(dp, tp, pp, micro: 2, steps) with
    {
        Train = TestClusters.MicroJob(dp, tp, pp, 2, steps).Train with { Precision = "fp64" },
        Checkpoint = new CheckpointConfig { Dir = Path.Combine(_checkpoints, dir), Interval = interval, KeepLast = 10 },
    };

    private static List<double> LocalLosses(JobConfig job)
    {
        using var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab);
        using var engine = LocalEngine.Create(job with { Checkpoint = new CheckpointConfig() }, data);
        return Enumerable.Range(0, (int)job.Train.Steps).Select(_ => engine.RunStep().Loss).ToList();
    }

    [Fact]
    public async Task A_cluster_checkpoint_resumes_in_another_layout_and_continues_the_same_training()
    {
        // 2/2/1 for 8 steps with a checkpoint every 4; then resume the checkpoint of step 4 under 1/2/2.
        var first = Job(2, 2, 1, steps: 8, "a", interval: 4);
        var id = await Scheduler.Submit(TestClusters.Submission(first));
        var status = await TestClusters.WaitFor(_cluster.Client, id, s => JobStates.IsFinal(s.State));
        Assert.Equal(JobStates.Completed, status.State);
        Assert.Equal(8, status.LastCheckpointStep);
        Assert.Equal([4L, 8L], CheckpointStore.List(first.Checkpoint.Dir).Where(e => e.Valid).Select(e => e.Step));
        Assert.Empty(CheckpointReader.Open(CheckpointStore.DirectoryFor(first.Checkpoint.Dir, 4)).Verify());

        var second = Job(1, 2, 2, steps: 8, "b", interval: 0);
        var resumeFrom = CheckpointStore.DirectoryFor(first.Checkpoint.Dir, 4);
        var id2 = await Scheduler.Submit(TestClusters.Submission(second) with { ResumeFrom = resumeFrom });
        var resumed = await TestClusters.WaitFor(_cluster.Client, id2, s => JobStates.IsFinal(s.State));
        Assert.Equal(JobStates.Completed, resumed.State);
        Assert.Equal([4L, 5L, 6L, 7L], resumed.Recent.Select(p => p.Step));
        Assert.Contains(resumed.Events, e => e.Kind == "restoring" && e.Message.Contains("saved under dp=2,tp=2,pp=1"));
        // The same training as one uninterrupted in-process run (fp64: layouts differ only by rounding).
        var expected = LocalLosses(second);
        Assert.Equal(expected, status.Recent.Select(p => p.Loss), new Tolerance(1e-12));
        Assert.Equal(expected.Skip(4), resumed.Recent.Select(p => p.Loss), new Tolerance(1e-12));
        Assert.Equal(8, resumed.LastCheckpointStep); // the final state, saved when the job ends
    }

    private async Task Restart(params string[] names)
    {
        foreach (var name in names)
            await _cluster.StopSiloAsync(_cluster.Silos.Single(s => s.Name == name), TestContext.Current.CancellationToken);
        foreach (var name in names)
            await _cluster.StartSiloAsync(int.Parse(name[5..]), _cluster.Options, TestContext.Current.CancellationToken);
    }

    private static string Describe(JobStatus s) => $"{s.State}: {s.Error} | {string.Join(" | ", s.Events.TakeLast(8).Select(e => $"{e.Kind}: {e.Message}"))}";

    [Fact]
    public async Task When_workers_lose_their_state_the_job_restores_from_the_newest_checkpoint()
    {
        // In-memory replicas every step too, but both servers go down together: a rank and its peer are lost
        // at once, so the replicas cannot help and the checkpoint on disk must.
        var job = Job(2, 1, 2, steps: 40, "lost", interval: 5) with { Train = TestClusters.MicroJob(2, 1, 2, 2, 40).Train };
        job = job with { Checkpoint = job.Checkpoint with { MemoryInterval = 1 } };
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        var coordinator = _cluster.Client.GetGrain<IJobCoordinatorGrain>(id);
        // Stop the job where the replicas are the newer recovery point, so that they are tried first.
        while (true)
        {
            await TestClusters.WaitFor(_cluster.Client, id, s => s.State == JobStates.Running && s.LastCheckpointStep >= 10 && s.LastReplicaStep >= s.LastCheckpointStep);
            await coordinator.Pause();
            var paused = await coordinator.GetStatus();
            if (paused.LastReplicaStep >= paused.LastCheckpointStep)
                break;
            await coordinator.Resume();
        }
        await Restart("Silo_0", "Silo_1");
        await coordinator.Resume();
        var status = await TestClusters.WaitFor(_cluster.Client, id, s => JobStates.IsFinal(s.State));
        Assert.True(status.State == JobStates.Completed, Describe(status));
        Assert.Contains(status.Events, e => e.Kind == "workers-lost");
        Assert.Equal(2, status.Workers.Select(w => w[..w.IndexOf('/')]).Distinct().Count());
        Assert.True(status.Events.Any(e => e.Kind == "replica-unavailable"), string.Join("\n", status.Events.Select(e => $"{e.Kind}: {e.Message}")));
        Assert.Contains(status.Events, e => e.Kind == "restoring" && e.Message.Contains("step-000000"));
        // Steps after the checkpoint are redone with the same samples: the trajectory is an uninterrupted run's.
        Assert.Equal(Enumerable.Range(0, 40).Select(i => (long)i), status.Recent.Select(p => p.Step));
        Assert.Equal(LocalLosses(job), status.Recent.Select(p => p.Loss), new Tolerance(1e-6));
    }

    [Fact]
    public async Task A_restarted_server_gets_its_ranks_back_from_the_in_memory_replicas_of_their_peers()
    {
        // Four ranks on two servers, an in-memory snapshot every 2 steps and no checkpoint on disk at all.
        var job = TestClusters.MicroJob(2, 1, 2, 2, 40) with { Checkpoint = new CheckpointConfig { MemoryInterval = 2 } };
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        var before = await TestClusters.WaitFor(_cluster.Client, id, s => s.LastReplicaStep >= 10);
        Assert.Equal(2, before.Workers.Select(w => w[..w.IndexOf('/')]).Distinct().Count());
        Assert.Contains(before.Events, e => e.Kind == "replica" && e.Message.Contains("kept by its peer on the next server"));
        await Restart("Silo_1");
        var status = await TestClusters.WaitFor(_cluster.Client, id, s => JobStates.IsFinal(s.State));
        Assert.True(status.State == JobStates.Completed, Describe(status));
        Assert.Contains(status.Events, e => e.Kind == "workers-lost");
        Assert.Contains(status.Events, e => e.Kind == "restoring" && e.Message.Contains("from the in-memory replicas of step"));
        Assert.DoesNotContain(status.Events, e => e.Kind is "replica-unavailable" or "replica-failed");
        // The restored ranks are the ranks that were lost, bit for bit: the trajectory is an uninterrupted run's.
        Assert.Equal(Enumerable.Range(0, 40).Select(i => (long)i), status.Recent.Select(p => p.Step));
        Assert.Equal(LocalLosses(job), status.Recent.Select(p => p.Loss), new Tolerance(1e-6));
    }

    [Fact]
    public async Task Checkpoint_on_demand_needs_a_checkpoint_folder()
    {
        var job = TestClusters.MicroJob(1, 1, 1, 1, steps: 2000);
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        await TestClusters.WaitFor(_cluster.Client, id, s => s.State == JobStates.Running);
        var ex = await Assert.ThrowsAsync<ClusterRequestException>(() => _cluster.Client.GetGrain<IJobCoordinatorGrain>(id).SaveCheckpoint());
        Assert.Contains("has no checkpoint.dir", ex.Message);
        await Scheduler.Cancel(id);

        var withDir = Job(1, 1, 1, steps: 2000, "demand", interval: 0);
        var id2 = await Scheduler.Submit(TestClusters.Submission(withDir));
        await TestClusters.WaitFor(_cluster.Client, id2, s => s.State == JobStates.Running && s.Step > 2);
        await _cluster.Client.GetGrain<IJobCoordinatorGrain>(id2).SaveCheckpoint();
        var saved = await TestClusters.WaitFor(_cluster.Client, id2, s => s.LastCheckpointStep is not null);
        Assert.Single(CheckpointStore.List(withDir.Checkpoint.Dir), e => e.Valid && e.Step == saved.LastCheckpointStep);
        await Scheduler.Cancel(id2);
    }

    private sealed class Tolerance(double epsilon) : IEqualityComparer<double>
    {
        public bool Equals(double x, double y) => Math.Abs(x - y) <= epsilon * Math.Max(1, Math.Abs(x));
        public int GetHashCode(double obj) => 0;
    }
}
