using FlmCluster.Training.Parallel;
using FlmCluster.Grains.Abstractions;

namespace FlmCluster.Grains.Tests;

public sealed class PlacementTests() : ClusterTestClass(2, 2, 2)
{
    private Task<WorkerStatus> Status(string worker) => Cluster.Client.GetGrain<IGpuWorkerGrain>(worker).GetStatus();

    [Fact]
    public async Task A_worker_lives_only_on_its_nodes_silo_and_fails_loudly_while_the_node_is_away()
    {
        Assert.Equal(["Silo_0", "Silo_1", "Silo_2"], Cluster.Silos.Select(s => s.Name).Order());
        foreach (var silo in Cluster.Silos)
            foreach (var gpu in new[] { 0, 1 })
                Assert.Equal(silo.SiloAddress.ToString(), (await Status($"{silo.Name}/gpu{gpu}")).Silo);

        var away = Cluster.Silos.Single(s => s.Name == "Silo_1");
        await Cluster.StopSiloAsync(away, TestContext.Current.CancellationToken);
        // Refused by placement, as the typed failure a coordinator recovers from.
        var ex = await Assert.ThrowsAsync<WorkerLostException>(() => Status("Silo_1/gpu0"));
        Assert.Equal("Silo_1/gpu0", ex.Worker);
        Assert.Contains("no active silo for node 'Silo_1'", ex.Message);
        // Nothing was placed elsewhere meanwhile.
        Assert.Equal(Cluster.Silos.Single(s => s.Name == "Silo_0").SiloAddress.ToString(), (await Status("Silo_0/gpu1")).Silo);

        // The server comes back: a new silo generation with the same node name.
        var back = await Cluster.StartSiloAsync(1, Cluster.Options, TestContext.Current.CancellationToken);
        Assert.Equal("Silo_1", back.Name);
        await Cluster.WaitForLivenessToStabilizeAsync();
        var status = await RetryAsync(() => Status("Silo_1/gpu0"));
        Assert.Equal(back.SiloAddress.ToString(), status.Silo);
    }

    [Fact]
    public async Task A_gpu_index_beyond_the_nodes_devices_does_not_exist()
    {
        var ex = await Assert.ThrowsAnyAsync<Exception>(() => Status("Silo_0/gpu7"));
        Assert.Contains("does not exist on node Silo_0", ex.ToString());
    }

    [Fact]
    public async Task Every_silo_answers_for_itself_which_server_it_is()
    {
        // The fallback when a silo's metadata is not in the local cache: a grain pinned to that very silo.
        foreach (var silo in Cluster.Silos)
        {
            var answer = await Cluster.Client.GetGrain<FlmCluster.Grains.Placement.INodeInfoGrain>(silo.SiloAddress.ToParsableString()).Describe();
            Assert.Equal((silo.Name, "cpu:2"), (answer.Node, answer.Devices));
        }
    }

    private static async Task<T> RetryAsync<T>(Func<Task<T>> call)
    {
        for (var attempt = 0; ; attempt++)
        {
            try
            {
                return await call();
            }
            catch when (attempt < 20)
            {
                await Task.Delay(250);
            }
        }
    }
}

public sealed class ReplicaPeerTests
{
    private static string[] Peers(string[] ranks, ParallelLayout layout) => FlmCluster.Grains.Jobs.ReplicaPeers.For(ranks, layout)!;

    [Fact]
    public void Every_rank_has_a_peer_on_the_next_server_and_every_worker_keeps_one_replica()
    {
        string[] ranks = ["a/gpu0", "a/gpu1", "b/gpu0", "b/gpu1", "c/gpu0", "c/gpu1"];
        var peers = Peers(ranks, new ParallelLayout(3, 2, 1));
        Assert.Equal(["b/gpu0", "b/gpu1", "c/gpu0", "c/gpu1", "a/gpu0", "a/gpu1"], peers);
        Assert.Equal(ranks.Order(), peers.Order()); // one replica each
    }

    [Fact]
    public void A_copy_goes_to_a_server_without_ranks_of_its_model_replica_where_there_is_one()
    {
        // dp=2, tp=2, pp=2: server a holds both replicas' first stage, b the second stage of replica 0, c of replica 1.
        var layout = new ParallelLayout(2, 2, 2);
        string[] ranks = ["a/gpu0", "a/gpu1", "a/gpu2", "a/gpu3", "b/gpu0", "b/gpu1", "c/gpu0", "c/gpu1"];
        var peers = Peers(ranks, layout);
        // Replica 0 (ranks 0, 1, 4, 5) lives on a and b: its copies go to c; replica 1 (2, 3, 6, 7) on a and c: copies to b.
        // The next server along the ring (b for a's ranks) would have put replica 0's first stage beside its second.
        Assert.Equal(["c/gpu0", "c/gpu1", "b/gpu0", "b/gpu1", "c/gpu0", "c/gpu1", "b/gpu0", "b/gpu1"], peers);
        Assert.All(Enumerable.Range(0, ranks.Length), rank =>
            Assert.DoesNotContain(peers[rank][..1], Enumerable.Range(0, ranks.Length).Where(r => layout.CoordsOf(r).Dp == layout.CoordsOf(rank).Dp).Select(r => ranks[r][..1])));
    }

    [Fact]
    public void Uneven_servers_still_put_every_peer_on_another_server()
    {
        string[] ranks = ["a/gpu0", "a/gpu1", "a/gpu2", "b/gpu0"];
        var peers = Peers(ranks, new ParallelLayout(1, 1, 4));
        Assert.All(ranks.Zip(peers), p => Assert.NotEqual(p.First[..1], p.Second[..1]));
        Assert.Null(FlmCluster.Grains.Jobs.ReplicaPeers.For(["a/gpu0", "a/gpu1"], new ParallelLayout(2, 1, 1))); // one server: no replica survives it
    }
}
