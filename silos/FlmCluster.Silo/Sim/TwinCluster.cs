using FlmCluster.Grains.Sim;
using FlmCluster.Training.Sim;

namespace FlmCluster.Silo.Sim;

/// <summary>What a twin run asks of its cluster.</summary>
/// <param name="Servers">GPU servers, then spares, named node0 … nodeN−1 in that order.</param>
/// <param name="Dir">A folder of the run's own for the silos' state (deleted after the run).</param>
/// <param name="Hardware">What the sim devices model; its GPUs per server is the servers' device count.</param>
public sealed record TwinClusterSpec(int Servers, string Dir, SimCluster Hardware);

/// <summary>
/// The simulated cluster a <see cref="TwinRun"/> drives: silos in this process (<see cref="InProcessTwinCluster"/>)
/// or one process per server on Redis. Both run the same grains; the twin only submits, watches, kills and repairs.
/// </summary>
public interface ITwinCluster : IAsyncDisposable
{
    /// <summary>Every silo's node: the GPU servers and spares (node0 …), and any control-plane silo.</summary>
    IReadOnlyList<string> Nodes { get; }

    /// <summary>Grains, through a silo that is up (<see cref="NoSiloRunningException"/> while every server is down).</summary>
    IGrainFactory Grains { get; }

    /// <summary>The cluster's virtual clock (the modelled time every silo shares).</summary>
    VirtualClock Clock { get; }

    bool IsRunning(string node);

    /// <summary>The server dies at once (its silo does not leave the cluster: membership finds out).</summary>
    Task KillAsync(string node);

    /// <summary>The server comes back, repaired, on its ports; returns once its silo is up.</summary>
    Task StartAsync(string node);

    /// <summary>The node of a silo named by its runtime identity ("S127.0.0.1:PORT:EPOCH"), or null.</summary>
    string? NodeOfSilo(string identity);

    /// <summary>Which samples each step of the job trained, by step (every silo's reports merged).</summary>
    IReadOnlyDictionary<long, StepSamples> Samples(string job);

    /// <summary>CPU time the cluster's silos have used so far, killed ones included.</summary>
    TimeSpan CpuTime();
}

/// <summary>A twin's silos in this process, sharing one simulation (clock and sample ledger).</summary>
public sealed class InProcessTwinCluster : ITwinCluster
{
    private readonly LocalCluster _cluster;
    private readonly FlmSimulation _simulation;

    private InProcessTwinCluster(LocalCluster cluster, FlmSimulation simulation)
    {
        _cluster = cluster;
        _simulation = simulation;
    }

    public static async Task<ITwinCluster> StartAsync(TwinClusterSpec spec)
    {
        var simulation = new FlmSimulation(spec.Hardware, new VirtualClock(), new SampleLedger());
        try
        {
            var cluster = await LocalCluster.StartAsync(spec.Servers, spec.Hardware.Hardware.GpusPerServer, storageDir: spec.Dir, observe: false, simulation: simulation);
            return new InProcessTwinCluster(cluster, simulation);
        }
        catch
        {
            simulation.Clock.Dispose();
            throw;
        }
    }

    public IReadOnlyList<string> Nodes => _cluster.Nodes;

    public IGrainFactory Grains => _cluster.Nodes.FirstOrDefault(_cluster.IsRunning) is { } node
        ? _cluster.Grains(node)
        : throw new NoSiloRunningException();

    public VirtualClock Clock => _simulation.Clock;

    public bool IsRunning(string node) => _cluster.IsRunning(node);

    public Task KillAsync(string node) => _cluster.KillAsync(node);

    public Task StartAsync(string node) => _cluster.StartAsync(node);

    public string? NodeOfSilo(string identity) => _cluster.NodeOfSilo(identity);

    public IReadOnlyDictionary<long, StepSamples> Samples(string job) => _simulation.Samples!.Of(job);

    public TimeSpan CpuTime() => Environment.CpuUsage.TotalTime;

    public async ValueTask DisposeAsync()
    {
        await _cluster.DisposeAsync();
        _simulation.Samples!.Dispose();
        _simulation.Clock.Dispose();
    }
}

/// <summary>Every silo of the twin's cluster is down: nothing answers until a server is repaired.</summary>
public sealed class NoSiloRunningException() : Exception("every silo of the simulated cluster is down");
