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

    [Fact]
    public async Task When_workers_lose_their_state_the_job_restores_from_the_newest_checkpoint()
    {
        var job = Job(2, 1, 1, steps: 40, "lost", interval: 5) with { Train = TestClusters.MicroJob(2, 1, 1, 2, 40).Train };
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        await TestClusters.WaitFor(_cluster.Client, id, s => s.LastCheckpointStep >= 10);
        // Both GPU servers restart: their workers come back empty.
        foreach (var name in new[] { "Silo_0", "Silo_1" })
        {
            var silo = _cluster.Silos.Single(s => s.Name == name);
            await _cluster.StopSiloAsync(silo, TestContext.Current.CancellationToken);
            await _cluster.StartSiloAsync(int.Parse(name[5..]), _cluster.Options, TestContext.Current.CancellationToken);
        }
        var status = await TestClusters.WaitFor(_cluster.Client, id, s => JobStates.IsFinal(s.State));
        Assert.True(status.State == JobStates.Completed, $"{status.State}: {status.Error} | {string.Join(" | ", status.Events.TakeLast(6).Select(e => $"{e.Kind}: {e.Message}"))}");
        Assert.Contains(status.Events, e => e.Kind == "workers-lost");
        Assert.Contains(status.Events, e => e.Kind == "restoring");
        // Steps after the checkpoint are redone with the same samples: the trajectory is an uninterrupted run's.
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
