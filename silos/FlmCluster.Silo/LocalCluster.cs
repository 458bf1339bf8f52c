using System.Net;
using System.Net.Sockets;
using FlmCluster.Grains.Sim;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace FlmCluster.Silo;

/// <summary>
/// A cluster of silos inside this process, on loopback with a shared in-process membership table and file
/// storage: the embedded default behind 'flm train', the simulated cluster of the simulation benchmark, and a
/// harness for benchmarks. Each silo is a full FlmCluster node; any of them may be killed (as a server dies),
/// stopped (taken down for maintenance) and started again. The first silo also serves the dashboard and carries
/// the process's telemetry (instruments are process-wide); its exporters come from the same Flm__ environment
/// variables a silo process reads (default: prometheus).
/// </summary>
public sealed class LocalCluster : IAsyncDisposable
{
    private readonly List<(SiloSettings Settings, IHost? Host)> _silos = [];
    private readonly InProcessMembershipTable _membership = new();
    private readonly FlmSimulation? _simulation;
    private readonly string _storage;
    private readonly bool _ownsStorage;
    private bool _observe;

    public IReadOnlyList<int> GatewayPorts { get; }
    public string ClusterId { get; }

    /// <summary>The silos' node names, in start order.</summary>
    public IReadOnlyList<string> Nodes => _silos.Select(s => s.Settings.Node).ToList();

    /// <summary>The dashboard's address (the first silo's web port); null when started without it.</summary>
    public string? DashboardUrl { get; private set; }

    private LocalCluster(IReadOnlyList<int> gatewayPorts, string clusterId, string storage, bool ownsStorage, FlmSimulation? simulation)
    {
        GatewayPorts = gatewayPorts;
        ClusterId = clusterId;
        _storage = storage;
        _ownsStorage = ownsStorage;
        _simulation = simulation;
    }

    /// <summary>
    /// Starts <paramref name="nodes"/> GPU nodes ("node0"…) with <paramref name="gpusPerNode"/> devices each — CPU
    /// devices, or simulated GPUs when a <paramref name="simulation"/> is given — plus an optional control-plane
    /// node; with <paramref name="observe"/>, the first serves the dashboard and exports telemetry;
    /// <paramref name="configure"/> changes every silo's settings before they are checked (e.g. secure mode).
    /// </summary>
    public static async Task<LocalCluster> StartAsync(int nodes, int gpusPerNode, bool controlNode = false, string? storageDir = null, int torchThreads = 0,
        bool observe = true, FlmSimulation? simulation = null, Func<SiloSettings, SiloSettings>? configure = null)
    {
        var environment = new ConfigurationBuilder().AddEnvironmentVariables().Build().GetSection("Flm").Get<SiloSettings>() ?? new SiloSettings();
        var kind = simulation is null ? "cpu" : "sim";
        var specs = Enumerable.Range(0, nodes).Select(i => ($"node{i}", $"{kind}:{gpusPerNode}")).ToList();
        if (controlNode)
            specs.Insert(0, ("control", "cpu:0"));
        var ports = FreePorts(2 * specs.Count + 1);
        var ownsStorage = storageDir is null;
        var storage = storageDir ?? Directory.CreateTempSubdirectory("flm-embedded-").FullName;
        var clusterId = $"embedded-{Guid.NewGuid():N}"[..20];
        var cluster = new LocalCluster(ports.Where((_, i) => i % 2 == 1).ToList(), clusterId, storage, ownsStorage, simulation) { _observe = observe };
        try
        {
            for (var i = 0; i < specs.Count; i++)
            {
                var web = observe && i == 0;
                var settings = new SiloSettings
                {
                    Node = specs[i].Item1,
                    Devices = specs[i].Item2,
                    SiloPort = ports[2 * i],
                    GatewayPort = ports[2 * i + 1],
                    ClusterId = clusterId,
                    StorageDir = storage,
                    TorchThreads = torchThreads,
                    HttpPort = web ? ports[^1] : 0,
                    Exporters = web ? environment.Exporters : "none",
                    OtlpEndpoint = environment.OtlpEndpoint,
                    OtlpProtocol = environment.OtlpProtocol,
                    DeviceModel = environment.DeviceModel,
                    PeakTflops = environment.PeakTflops,
                };
                settings = configure?.Invoke(settings) ?? settings;
                settings.Validate(simulated: simulation is not null);
                cluster._silos.Add((settings, null));
                if (web)
                    cluster.DashboardUrl = $"http://127.0.0.1:{settings.HttpPort}/";
            }
            // Started together: each silo's start waits on joining the others.
            await Task.WhenAll(cluster.Nodes.Select(cluster.StartAsync));
        }
        catch
        {
            await cluster.DisposeAsync();
            throw;
        }
        return cluster;
    }

    /// <summary>Starts a node's silo (again, after it was killed or stopped), on its ports.</summary>
    public async Task StartAsync(string node)
    {
        var index = IndexOf(node);
        if (_silos[index].Host is not null)
            throw new InvalidOperationException($"node {node} is running");
        var settings = _silos[index].Settings;
        var host = FlmSiloHost.Build(settings, telemetry: settings.HttpPort > 0, grainStatistics: _observe, minimumLevel: LogLevel.Error,
            inProcess: new FlmSiloHost.InProcessCluster(_membership, _simulation));
        await host.StartAsync();
        _silos[index] = (_silos[index].Settings, host);
    }

    /// <summary>The node's server dies: its silo stops at once, without leaving the cluster (the others find out by membership).</summary>
    public Task KillAsync(string node) => Stop(node, new CancellationToken(canceled: true));

    /// <summary>The node is taken down in order (maintenance): its silo leaves the cluster.</summary>
    public Task StopAsync(string node) => Stop(node, CancellationToken.None);

    public bool IsRunning(string node) => _silos[IndexOf(node)].Host is not null;

    /// <summary>The node of a silo of this cluster named by its runtime identity ("S127.0.0.1:PORT:EPOCH"), or null.</summary>
    public string? NodeOfSilo(string identity) =>
        identity.Split(':') is [_, var port, ..] && int.TryParse(port, out var p) ? _silos.FirstOrDefault(s => s.Settings.SiloPort == p).Settings?.Node : null;

    /// <summary>A running silo's grain factory (for calls from inside the process).</summary>
    public IGrainFactory Grains(string node) => (_silos[IndexOf(node)].Host ?? throw new InvalidOperationException($"node {node} is not running")).Services.GetRequiredService<IGrainFactory>();

    private async Task Stop(string node, CancellationToken token)
    {
        var index = IndexOf(node);
        if (_silos[index].Host is not { } host)
            return;
        _silos[index] = (_silos[index].Settings, null);
        try
        {
            await host.StopAsync(token);
        }
        catch (OperationCanceledException)
        {
            // killed: nothing waits for an orderly stop
        }
        finally
        {
            host.Dispose();
        }
    }

    private int IndexOf(string node) =>
        _silos.FindIndex(s => s.Settings.Node == node) is >= 0 and var i ? i : throw new ArgumentException($"no node '{node}' in this cluster");

    /// <summary>Ports nothing listens on right now (taken by the OS for a moment, then freed).</summary>
    public static List<int> FreePorts(int count)
    {
        var listeners = Enumerable.Range(0, count).Select(_ => new TcpListener(IPAddress.Loopback, 0)).ToList();
        listeners.ForEach(l => l.Start());
        var ports = listeners.Select(l => ((IPEndPoint)l.LocalEndpoint).Port).ToList();
        listeners.ForEach(l => l.Stop());
        return ports;
    }

    public async ValueTask DisposeAsync()
    {
        foreach (var node in Enumerable.Reverse(Nodes).ToList())
        {
            var index = IndexOf(node);
            if (_silos[index].Host is not { } host)
                continue;
            _silos[index] = (_silos[index].Settings, null);
            try
            {
                await host.StopAsync(TimeSpan.FromSeconds(10));
            }
            finally
            {
                host.Dispose();
            }
        }
        if (_ownsStorage && Directory.Exists(_storage))
            Directory.Delete(_storage, recursive: true);
    }
}
