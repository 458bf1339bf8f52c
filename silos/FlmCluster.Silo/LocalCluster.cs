using System.Net;
using System.Net.Sockets;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace FlmCluster.Silo;

/// <summary>
/// A cluster of silos inside this process, on loopback with development clustering and file storage: the
/// embedded default behind 'flm train', and a harness for benchmarks. Each silo is a full FlmCluster node. The
/// first silo also serves the dashboard and carries the process's telemetry (instruments are process-wide);
/// its exporters come from the same Flm__ environment variables a silo process reads (default: prometheus).
/// </summary>
public sealed class LocalCluster : IAsyncDisposable
{
    private readonly List<IHost> _silos = [];
    private readonly string _storage;
    private readonly bool _ownsStorage;

    public IReadOnlyList<int> GatewayPorts { get; }
    public string ClusterId { get; }

    /// <summary>The dashboard's address (the first silo's web port); null when started without it.</summary>
    public string? DashboardUrl { get; private set; }

    private LocalCluster(IReadOnlyList<int> gatewayPorts, string clusterId, string storage, bool ownsStorage)
    {
        GatewayPorts = gatewayPorts;
        ClusterId = clusterId;
        _storage = storage;
        _ownsStorage = ownsStorage;
    }

    /// <summary>
    /// Starts <paramref name="nodes"/> GPU nodes ("node0"…) with <paramref name="gpusPerNode"/> CPU devices each, plus an
    /// optional control-plane node; with <paramref name="observe"/>, the first serves the dashboard and exports telemetry;
    /// <paramref name="configure"/> changes every silo's settings before they are checked (e.g. secure mode).
    /// </summary>
    public static async Task<LocalCluster> StartAsync(int nodes, int gpusPerNode, bool controlNode = false, string? storageDir = null, int torchThreads = 0,
        bool observe = true, Func<SiloSettings, SiloSettings>? configure = null)
    {
        var environment = new ConfigurationBuilder().AddEnvironmentVariables().Build().GetSection("Flm").Get<SiloSettings>() ?? new SiloSettings();
        var specs = Enumerable.Range(0, nodes).Select(i => ($"node{i}", $"cpu:{gpusPerNode}")).ToList();
        if (controlNode)
            specs.Insert(0, ("control", "cpu:0"));
        var ports = FreePorts(2 * specs.Count + 1);
        var ownsStorage = storageDir is null;
        var storage = storageDir ?? Directory.CreateTempSubdirectory("flm-embedded-").FullName;
        var clusterId = $"embedded-{Guid.NewGuid():N}"[..20];
        var cluster = new LocalCluster(ports.Where((_, i) => i % 2 == 1).ToList(), clusterId, storage, ownsStorage);
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
                    PrimarySiloPort = ports[0],
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
                settings.Validate();
                var host = FlmSiloHost.Build(settings, telemetry: web, grainStatistics: observe, minimumLevel: LogLevel.Error);
                await host.StartAsync();
                cluster._silos.Add(host);
                if (web)
                    cluster.DashboardUrl = $"http://127.0.0.1:{settings.HttpPort}/";
            }
        }
        catch
        {
            await cluster.DisposeAsync();
            throw;
        }
        return cluster;
    }

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
        // Secondary silos first, the primary (which holds the membership table) last.
        foreach (var silo in Enumerable.Reverse(_silos))
        {
            try
            {
                await silo.StopAsync(TimeSpan.FromSeconds(10));
            }
            finally
            {
                silo.Dispose();
            }
        }
        _silos.Clear();
        if (_ownsStorage && Directory.Exists(_storage))
            Directory.Delete(_storage, recursive: true);
    }
}
