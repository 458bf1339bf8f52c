using System.Diagnostics;
using FlmCluster.Client;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Config;
using FlmCluster.Training.Data;
using FlmCluster.Training.Engine;
using FlmCluster.Training.Parallel;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>
/// Silo processes whose tensors travel over the socket data plane (Flm:DataPlane=socket): jobs give the in-process
/// engine's numbers, and the kill -9 of a server fails its peers' collectives at once, not at the timeout.
/// </summary>
[Trait("Category", "EndToEnd")]
public sealed class SocketDataPlaneEndToEndTests : IDisposable
{
    private readonly Flm _flm = new("flm-e2e-socket-");

    public void Dispose() => _flm.Dispose();

    /// <summary>The tiny preset on bytes, short sequences, a few steps, in the given layout.</summary>
    private static JobConfig Job(string layout, int steps, params string[] more) =>
        JobConfigLoader.Load("tiny", ["tokenizer=bytes", "model.vocab_pad_multiple=128", "model.seq_len=64", $"train.steps={steps}", .. more],
            job => job with { Layout = ParallelLayout.Parse(layout, job.Layout) });

    /// <summary>A client through the control node's gateway alone (<c>flm cluster up</c> starts it first), which no test kills.</summary>
    private Task<FlmClusterClient> Connect(int basePort) =>
        FlmClusterClient.ConnectAsync(ClusterProfile.Load(_flm.Profile) with { Clustering = "localhost", GatewayPorts = [basePort + 1000] });

    private static List<double> LocalLosses(JobConfig job)
    {
        using var data = TokenDataset.Load(job.Data.Paths, TokenizerFactory.Create(job.Tokenizer), job.Model.PaddedVocab);
        using var engine = LocalEngine.Create(job, data);
        return Enumerable.Range(0, (int)job.Train.Steps).Select(_ => engine.RunStep().Loss).ToList();
    }

    private static async Task<JobStatus> WaitFor(FlmClusterClient client, string id, Func<JobStatus, bool> done)
    {
        var watch = Stopwatch.StartNew();
        while (true)
        {
            var status = await client.Status(id);
            if (done(status))
                return status;
            Assert.True(watch.Elapsed < TimeSpan.FromMinutes(4), $"job {id} is {status.State} at step {status.Step}: {string.Join(" | ", status.Events.TakeLast(4).Select(e => e.Message))}");
            await Task.Delay(100, TestContext.Current.CancellationToken);
        }
    }

    [Fact]
    public async Task Jobs_across_silo_processes_over_sockets_give_the_in_process_engines_losses_bit_for_bit()
    {
        _flm.Environment["Flm__DataPlane"] = "socket";
        _flm.Up(nodes: 2, gpusPerNode: 2, basePort: 24111);
        await using var client = await Connect(24111);
        // Tensor-parallel pairs inside a server, data-parallel across; pipeline stages across; a data-parallel group
        // of four whose chain reduces inside each server and crosses between them once.
        foreach (var layout in new[] { "dp=2,tp=2", "dp=2,pp=2,micro=2", "dp=4" })
        {
            var job = Job(layout, steps: 4);
            var id = await client.Submit(new JobSubmission(JobConfigLoader.ToJson(job)));
            var status = await WaitFor(client, id, s => s.State.IsFinal());
            Assert.True(status.State == JobPhase.Completed, $"{layout}: {status.State} {status.Error}");
            Assert.Equal(2, status.Workers.Select(w => w[..w.IndexOf('/')]).Distinct().Count());
            Assert.Equal(LocalLosses(job), status.Recent.Select(p => p.Loss));
        }
    }

    [Fact]
    public async Task A_server_killed_mid_training_fails_its_peers_collective_at_once_and_the_job_goes_on()
    {
        _flm.Environment["Flm__DataPlane"] = "socket";
        _flm.Environment["Flm__CollectiveTimeoutSeconds"] = "300";
        _flm.Environment["Flm__WorkerWaitSeconds"] = "3";
        _flm.Up(nodes: 2, gpusPerNode: 1, basePort: 24211);
        await using var client = await Connect(24211);
        var root = Path.Combine(_flm.Home, "ckpt");
        // Wide enough that a good part of each step is the gradients' exchange between the two servers.
        var job = Job("dp=2", steps: 16, "model.hidden=256", "model.heads=4", $"checkpoint.dir={root}", "checkpoint.interval=4");
        var id = await client.Submit(new JobSubmission(JobConfigLoader.ToJson(job)));
        await WaitFor(client, id, s => s.Step >= 6 && Directory.Exists(root) && Directory.GetFiles(root, "manifest.json", SearchOption.AllDirectories).Length > 0);

        Process.GetProcessById(_flm.SiloPid("node1")).Kill(); // SIGKILL: its sockets close without a goodbye
        var watch = Stopwatch.StartNew();
        var survivor = client.Grains.GetGrain<IGpuWorkerGrain>("node0/gpu0");
        WorkerStatus worker;
        do
        {
            worker = await survivor.GetStatus();
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(60), $"node0/gpu0 is {worker.State} ({worker.Detail}) {watch.Elapsed.TotalSeconds:0} s after the kill");
            await Task.Delay(20, TestContext.Current.CancellationToken);
        }
        while (worker.State != WorkerState.Failed);
        var failedAfter = watch.Elapsed;
        // Whichever comes first ends the collective: the broken connection, or the coordinator's abort once its own
        // call to the dead server failed. Either way well under the 300 s collective timeout.
        Assert.Matches(@"lost the connection to rank 1 \(node1/gpu0\)|left job [^:]+: the worker left the job", worker.Detail);
        Assert.True(failedAfter < TimeSpan.FromSeconds(30), $"the survivor's collective failed {failedAfter.TotalSeconds:0.0} s after the kill");

        var status = await WaitFor(client, id, s => s.State.IsFinal());
        Assert.True(status.State == JobPhase.Completed, $"{status.State}: {status.Error}");
        Assert.Contains(status.Events, e => e.Kind == "workers-lost");
        Assert.Contains(status.Events, e => e.Kind == "shrunk");
        Assert.Equal(16, status.Step);
    }
}
