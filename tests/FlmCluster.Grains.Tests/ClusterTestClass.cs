using FlmCluster.Grains.Abstractions;
using Orleans.TestingHost;

namespace FlmCluster.Grains.Tests;

/// <summary>A test class with its own in-process cluster (see <see cref="TestClusters.Start(TimeSpan, int[])"/>), started before its tests and stopped after.</summary>
public abstract class ClusterTestClass(TimeSpan workerWait, string dataPlane, params int[] devices) : IAsyncLifetime
{
    private string _storage = "";

    protected ClusterTestClass(params int[] devices) : this(TimeSpan.FromMinutes(5), devices)
    {
    }

    protected ClusterTestClass(TimeSpan workerWait, params int[] devices) : this(workerWait, "orleans", devices)
    {
    }

    protected InProcessTestCluster Cluster { get; private set; } = null!;

    protected IClusterSchedulerGrain Scheduler => Cluster.Client.GetGrain<IClusterSchedulerGrain>("cluster");

    public async ValueTask InitializeAsync() => (Cluster, _storage) = await TestClusters.Start(workerWait, dataPlane, devices);

    public virtual async ValueTask DisposeAsync()
    {
        await TestClusters.Stop(Cluster, _storage);
        GC.SuppressFinalize(this);
    }
}
