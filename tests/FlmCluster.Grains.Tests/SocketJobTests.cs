using FlmCluster.Grains.Abstractions;

namespace FlmCluster.Grains.Tests;

/// <summary>Jobs on two GPU servers (2 CPU devices each) and a control-plane silo whose tensors travel over the socket data plane.</summary>
[Collection("Cluster jobs")]
public sealed class SocketJobTests() : ClusterTestClass(TimeSpan.FromMinutes(5), "socket", 2, 2, 0)
{
    [Theory]
    [InlineData(2, 2, 1, 1)] // tensor-parallel groups inside a server (in memory), data-parallel pairs across (TCP)
    [InlineData(2, 1, 2, 2)] // pipeline stages and data-parallel replicas across the servers
    [InlineData(4, 1, 1, 2)] // a data-parallel group of four: the chain reduces inside each server, crosses once
    public async Task A_job_over_the_socket_data_plane_gives_the_in_process_engines_losses(int dp, int tp, int pp, int micro)
    {
        var job = TestClusters.MicroJob(dp, tp, pp, micro, steps: 5);
        var id = await Scheduler.Submit(TestClusters.Submission(job));
        var status = await TestClusters.WaitFor(Cluster.Client, id, s => s.State.IsFinal());
        Assert.True(status.State == JobPhase.Completed, $"{status.State}: {status.Error}");
        Assert.Equal(2, status.Workers.Select(w => w[..w.IndexOf('/')]).Distinct().Count());
        // Member-order reductions, as in process: identical numbers.
        Assert.Equal(TestClusters.LocalLosses(job), status.Recent.Select(p => p.Loss));
    }
}
