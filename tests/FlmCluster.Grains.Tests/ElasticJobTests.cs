using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;

namespace FlmCluster.Grains.Tests;

/// <summary>A job that loses a server continues on the GPUs that remain, and takes them back when the server returns, without anyone stepping in.</summary>
[Collection("Cluster jobs")]
public sealed class ElasticJobTests() : ClusterTestClass(TimeSpan.FromSeconds(2), 2, 2, 0)
{
    private readonly string _checkpoints = Directory.CreateTempSubdirectory("flm-elastic-").FullName;

    public override async ValueTask DisposeAsync()
    {
        await base.DisposeAsync();
        Directory.Delete(_checkpoints, recursive: true);
    }

    [Fact]
    public async Task A_job_shrinks_onto_the_server_that_remains_and_grows_back_when_the_other_returns_with_the_same_samples()
    {
        // dp=4 over both servers (two ranks each), fp64 so that the other layouts differ only by rounding.
        const int steps = 200;
        var job = TestClusters.MicroJob(4, 1, 1, 1, steps) with
        {
            Train = TestClusters.MicroJob(4, 1, 1, 1, steps).Train with { Precision = "fp64" },
            Checkpoint = new CheckpointConfig { Dir = _checkpoints, Interval = 4, KeepLast = 10 },
        };
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        var running = await TestClusters.WaitFor(Cluster.Client, id, s => s.LastCheckpointStep >= 8 || s.State.IsFinal());
        Assert.Equal(2, running.Workers.Select(w => w[..w.IndexOf('/')]).Distinct().Count());

        // Silo_1 dies: after the wait the job goes on with two replicas of twice the micro-batches on Silo_0.
        await Cluster.KillSiloAsync(Cluster.Silos.Single(s => s.Name == "Silo_1"), TestContext.Current.CancellationToken);
        var shrunk = await TestClusters.WaitFor(Cluster.Client, id, s => s.Events.Any(e => e.Kind == "shrunk") || s.State.IsFinal());
        Assert.Contains(shrunk.Events, e => e.Kind == "shrunk" && e.Message.Contains("4 GPUs, layout dp=4,tp=1,pp=1,micro=1 → 2 GPUs, layout dp=2,tp=1,pp=1,micro=2; global batch kept"));

        // Silo_1 comes back: the job checkpoints and moves back to its submitted layout.
        await Cluster.StartSiloAsync(1, Cluster.Options, TestContext.Current.CancellationToken);
        var status = await TestClusters.WaitFor(Cluster.Client, id, s => s.State.IsFinal());
        var events = await TestClusters.Events(Cluster.Client, id);
        string Events() => string.Join("\n", events.Select(e => $"{e.Kind}: {e.Message}"));
        Assert.True(status.State == JobPhase.Completed, $"{status.State}: {status.Error}\n{Events()}");
        Assert.True(events.Any(e => e.Kind == "grown-back" && e.Message.Contains("2 GPUs, layout dp=2,tp=1,pp=1,micro=2 → 4 GPUs, layout dp=4,tp=1,pp=1,micro=1")), Events());
        Assert.Equal("dp=4,tp=1,pp=1", status.Layout);
        Assert.Equal(2, status.Workers.Select(w => w[..w.IndexOf('/')]).Distinct().Count());

        // Every step once, in order, and the same training as one uninterrupted run (rounding aside).
        var final = await AssertUninterruptedTraining(job, status.JobId);
        Assert.Equal(4, final.Layout.Dp);
        Assert.Equal(4, (await Scheduler.GetInventory()).TotalGpus);
    }

    [Fact]
    public async Task A_job_shrinks_from_its_in_memory_replicas_when_they_are_newer_than_its_checkpoint()
    {
        // dp=4 over both servers, replicas every 2 steps, checkpoints every 30: when Silo_1 dies, the replicas its
        // ranks sent to Silo_0 and Silo_0's own rebuild dp=2 there, resharded, at a step no checkpoint has.
        const int steps = 60;
        var job = TestClusters.MicroJob(4, 1, 1, 1, steps) with
        {
            Train = TestClusters.MicroJob(4, 1, 1, 1, steps).Train with { Precision = "fp64" },
            Checkpoint = new CheckpointConfig { Dir = _checkpoints, Interval = 30, KeepLast = 10, MemoryInterval = 2 },
            Recovery = new RecoveryConfig { WaitSeconds = 0 },
        };
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        var running = await TestClusters.WaitFor(Cluster.Client, id, s => s.LastReplicaStep >= 6 || s.State.IsFinal());
        Assert.Equal(2, running.Workers.Select(w => w[..w.IndexOf('/')]).Distinct().Count());

        await Cluster.KillSiloAsync(Cluster.Silos.Single(s => s.Name == "Silo_1"), TestContext.Current.CancellationToken);
        var status = await TestClusters.WaitFor(Cluster.Client, id, s => s.State.IsFinal());
        var events = await TestClusters.Events(Cluster.Client, id);
        string Events() => string.Join("\n", events.Select(e => $"{e.Kind}: {e.Message}"));
        Assert.True(status.State == JobPhase.Completed, $"{status.State}: {status.Error}\n{Events()}");
        var shrunk = Assert.Single(events, e => e.Kind == "shrunk");
        Assert.Contains("4 GPUs, layout dp=4,tp=1,pp=1,micro=1 → 2 GPUs, layout dp=2,tp=1,pp=1,micro=2; global batch kept; from the in-memory replicas of step ", shrunk.Message);
        var from = long.Parse(shrunk.Message[(shrunk.Message.IndexOf("replicas of step ", StringComparison.Ordinal) + 17)..].Split(' ')[0], System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(from, 6, steps - 1);
        Assert.DoesNotContain(events, e => e.Kind == "checkpoint" && e.Message.StartsWith($"step {from} ", StringComparison.Ordinal));
        Assert.Equal("dp=2,tp=1,pp=1", status.Layout);

        // Every step once, in order, and the same training as one uninterrupted run (rounding aside).
        await AssertUninterruptedTraining(job, status.JobId);
    }

    /// <summary>
    /// The job committed every step once, in order, with the losses of one uninterrupted in-process run to 1e-12
    /// (fp64: another data-parallel size sums a rank's micro-batches before the all-reduce, which rounds
    /// differently), and its final checkpoint counts the samples of every step. Returns that checkpoint's manifest.
    /// </summary>
    private async Task<CheckpointManifest> AssertUninterruptedTraining(JobConfig job, string id)
    {
        var steps = job.Train.Steps;
        var committed = await TestClusters.Steps(Cluster.Client, id);
        Assert.Equal(Enumerable.Range(0, (int)steps).Select(i => (long)i), committed.Select(p => p.Step));
        using var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab);
        using var engine = LocalEngine.Create(job with { Checkpoint = new CheckpointConfig() }, data);
        var expected = Enumerable.Range(0, (int)steps).Select(_ => engine.RunStep().Loss).ToList();
        Assert.Equal(expected, committed.Select(p => p.Loss), new Tolerance(1e-12));
        var final = CheckpointReader.Open(CheckpointStore.DirectoryFor(_checkpoints, steps)).Manifest;
        Assert.Equal(steps * job.Train.GlobalBatch, final.SamplesConsumed);
        return final;
    }
}
