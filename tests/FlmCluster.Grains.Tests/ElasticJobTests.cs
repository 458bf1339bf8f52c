using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Checkpoint;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;

namespace FlmCluster.Grains.Tests;

/// <summary>A job that loses a server for good continues on the GPUs that remain, without anyone stepping in.</summary>
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
    public async Task A_job_that_loses_a_server_for_good_continues_on_the_rest_with_fewer_replicas_and_the_same_samples()
    {
        // dp=4 over both servers (two ranks each), fp64 so that the smaller layout differs only by rounding.
        var job = TestClusters.MicroJob(4, 1, 1, 1, steps: 24) with
        {
            Train = TestClusters.MicroJob(4, 1, 1, 1, 24).Train with { Precision = "fp64" },
            Checkpoint = new CheckpointConfig { Dir = _checkpoints, Interval = 4, KeepLast = 10 },
        };
        var scheduler = Cluster.Client.GetGrain<IClusterSchedulerGrain>("cluster");
        var id = await scheduler.Submit(TestClusters.Submission(job));
        var running = await TestClusters.WaitFor(Cluster.Client, id, s => s.LastCheckpointStep >= 8 || JobStates.IsFinal(s.State));
        Assert.Equal(2, running.Workers.Select(w => w[..w.IndexOf('/')]).Distinct().Count());

        await Cluster.KillSiloAsync(Cluster.Silos.Single(s => s.Name == "Silo_1"), TestContext.Current.CancellationToken);
        var status = await TestClusters.WaitFor(Cluster.Client, id, s => JobStates.IsFinal(s.State));
        string Events() => string.Join("\n", status.Events.Select(e => $"{e.Kind}: {e.Message}"));
        Assert.True(status.State == JobStates.Completed, $"{status.State}: {status.Error}\n{Events()}");

        // Two replicas on the surviving server, each with twice the micro-batches: the global batch is kept.
        Assert.Contains(status.Events, e => e.Kind == "shrunk" && e.Message.Contains("→ 2 GPUs, layout dp=2,tp=1,pp=1,micro=2"));
        Assert.Equal("dp=2,tp=1,pp=1", status.Layout);
        Assert.All(status.Workers, w => Assert.StartsWith("Silo_0/", w));
        var inventory = await scheduler.GetInventory();
        Assert.Equal((2, 2), (inventory.TotalGpus, inventory.FreeGpus)); // the dead server is gone; the job freed what it held

        // Every step once, in order, and the same training as one uninterrupted run (rounding aside).
        Assert.Equal(Enumerable.Range(0, 24).Select(i => (long)i), status.Recent.Select(p => p.Step));
        using var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab);
        using var engine = LocalEngine.Create(job with { Checkpoint = new CheckpointConfig() }, data);
        var expected = Enumerable.Range(0, 24).Select(_ => engine.RunStep().Loss).ToList();
        Assert.Equal(expected, status.Recent.Select(p => p.Loss), new Tolerance(1e-12));
        var final = CheckpointReader.Open(CheckpointStore.DirectoryFor(_checkpoints, 24)).Manifest;
        Assert.Equal(24L * job.Train.GlobalBatch, final.SamplesConsumed);
        Assert.Equal(2, final.Layout.Dp);
    }
}
