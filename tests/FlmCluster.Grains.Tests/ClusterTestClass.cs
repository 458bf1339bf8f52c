using FlmCluster.Grains.Abstractions;
using Orleans.TestingHost;

namespace FlmCluster.Grains.Tests;

/// <summary>A test class with its own in-process cluster (see <see cref="TestClusters.Start(TimeSpan, Action{ISiloBuilder}?, string, int[])"/>), started before its tests and stopped after.</summary>
public abstract class ClusterTestClass(TimeSpan workerWait, Action<ISiloBuilder>? configure, string dataPlane, params int[] devices) : IAsyncLifetime
{
    private string _storage = "";

    protected ClusterTestClass(params int[] devices) : this(TimeSpan.FromMinutes(5), (Action<ISiloBuilder>?)null, devices)
    {
    }

    protected ClusterTestClass(TimeSpan workerWait, params int[] devices) : this(workerWait, (Action<ISiloBuilder>?)null, devices)
    {
    }

    protected ClusterTestClass(TimeSpan workerWait, Action<ISiloBuilder>? configure, params int[] devices) : this(workerWait, configure, "orleans", devices)
    {
    }

    /// <summary>A cluster whose silos run the data plane <paramref name="dataPlane"/> (Flm:DataPlane).</summary>
    protected ClusterTestClass(TimeSpan workerWait, string dataPlane, params int[] devices) : this(workerWait, null, dataPlane, devices)
    {
    }

    protected InProcessTestCluster Cluster { get; private set; } = null!;

    protected IClusterSchedulerGrain Scheduler => Cluster.Client.GetGrain<IClusterSchedulerGrain>("cluster");

    public async ValueTask InitializeAsync() => (Cluster, _storage) = await TestClusters.Start(workerWait, configure, dataPlane, devices);

    public virtual async ValueTask DisposeAsync()
    {
        await TestClusters.Stop(Cluster, _storage);
        GC.SuppressFinalize(this);
    }
}
