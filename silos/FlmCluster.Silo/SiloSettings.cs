using System.Net;
using FlmCluster.Grains;
using FlmCluster.Training.Sim;
using Microsoft.Extensions.Configuration;

namespace FlmCluster.Silo;

/// <summary>
/// A server's silo settings, from the "Flm" configuration section (appsettings.json, FLM__KEY environment
/// variables, or command-line switches such as --node and --devices). See docs/operations.md.
/// </summary>
public sealed record SiloSettings
{
    public string Node { get; init; } = "";
    public string Devices { get; init; } = "cpu:1";

    /// <summary><c>localhost</c>: development clustering on one machine (the silo on PrimarySiloPort keeps the membership table); <c>redis</c>: Redis membership, storage and reminders.</summary>
    public string Clustering { get; init; } = "localhost";
    public string Redis { get; init; } = "";
    public int SiloPort { get; init; } = 11111;
    public int GatewayPort { get; init; } = 30000;
    public int PrimarySiloPort { get; init; } = 11111;

    /// <summary>Address other silos reach this one at (default: loopback for localhost clustering, else this host's address).</summary>
    public string AdvertisedAddress { get; init; } = "";
    public string ClusterId { get; init; } = "flm";
    public string ServiceId { get; init; } = "flmcluster";

    /// <summary>Grain state directory for localhost clustering (shared by the silos of one machine).</summary>
    public string StorageDir { get; init; } = ".flm/storage";

    /// <summary>When set, the silo writes this file once it is active (used by 'flm cluster up').</summary>
    public string ReadyFile { get; init; } = "";

    public double ProbeTimeoutSeconds { get; init; } = 2;
    public int MissedProbesLimit { get; init; } = 3;
    public int VotesForDeathDeclaration { get; init; } = 2;
    public double CollectiveTimeoutSeconds { get; init; } = 300;
    public double WorkerWaitSeconds { get; init; } = 30;
    public double HangGraceSeconds { get; init; } = 10;
    public int TorchThreads { get; init; }

    /// <summary>How tensors travel between workers (<see cref="FlmNodeOptions.DataPlanes"/>).</summary>
    public string DataPlane { get; init; } = FlmNodeOptions.DataPlanes[0];

    /// <summary>
    /// For a silo of a simulated cluster (<c>flm sim --processes</c>): the file every silo of the cluster shares its
    /// modelled time through. Sim devices need it; a control-plane silo given it runs its jobs on the virtual clock.
    /// </summary>
    public string SimClock { get; init; } = "";

    /// <summary>What sim devices model: a hardware preset (dgx-a800, dgx-a100, dgx-h100, dgx-h200) or a JSON file.</summary>
    public string SimHardware { get; init; } = ClusterHardware.DgxA800.Name;

    /// <summary>Command-line switches and the configuration keys they set.</summary>
    public static readonly IDictionary<string, string> Switches = new Dictionary<string, string>
    {
        ["--node"] = "Flm:Node",
        ["--devices"] = "Flm:Devices",
        ["--clustering"] = "Flm:Clustering",
        ["--redis"] = "Flm:Redis",
        ["--silo-port"] = "Flm:SiloPort",
        ["--gateway-port"] = "Flm:GatewayPort",
        ["--primary-port"] = "Flm:PrimarySiloPort",
        ["--advertise"] = "Flm:AdvertisedAddress",
        ["--cluster-id"] = "Flm:ClusterId",
        ["--service-id"] = "Flm:ServiceId",
        ["--storage-dir"] = "Flm:StorageDir",
        ["--ready-file"] = "Flm:ReadyFile",
        ["--torch-threads"] = "Flm:TorchThreads",
        ["--data-plane"] = "Flm:DataPlane",
        ["--sim-clock"] = "Flm:SimClock",
        ["--sim-hardware"] = "Flm:SimHardware",
    };

    public static SiloSettings From(IConfiguration configuration)
    {
        var settings = configuration.GetSection("Flm").Get<SiloSettings>() ?? new SiloSettings();
        settings.Validate();
        return settings;
    }

    public DeviceSpec DeviceSpec => FlmCluster.Grains.DeviceSpec.Parse(Devices);

    public IPAddress Advertised => string.IsNullOrWhiteSpace(AdvertisedAddress)
        ? (Clustering == "localhost" ? IPAddress.Loopback : Dns.GetHostAddresses(Dns.GetHostName()).First(a => a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork))
        : IPAddress.Parse(AdvertisedAddress);

    /// <summary>Throws <see cref="ArgumentException"/> with one line naming the setting and the fix.</summary>
    /// <param name="simulated">The silo is given its simulation in process (<see cref="LocalCluster"/>): sim devices need no clock file.</param>
    public void Validate(bool simulated = false)
    {
        if (string.IsNullOrWhiteSpace(Node) || Node.Contains('/'))
            throw new ArgumentException("Flm:Node (--node) must name this server, without '/'");
        if (!FlmCluster.Grains.DeviceSpec.TryParse(Devices, out var spec))
            throw new ArgumentException($"Flm:Devices (--devices) '{Devices}' is not cpu:N, cuda:N or sim:N");
        if (spec.Kind == "sim" && !simulated && string.IsNullOrWhiteSpace(SimClock))
            throw new ArgumentException("Flm:Devices: sim devices model their work on a virtual clock; give Flm:SimClock (--sim-clock FILE), the file the simulated cluster's silos share");
        if (!string.IsNullOrWhiteSpace(SimClock) && !Directory.Exists(Path.GetDirectoryName(Path.GetFullPath(SimClock))))
            throw new ArgumentException($"Flm:SimClock (--sim-clock) '{SimClock}': its folder does not exist");
        if (!string.IsNullOrWhiteSpace(SimClock))
        {
            try
            {
                ClusterHardware.Load(SimHardware);
            }
            catch (FlmCluster.Training.FlmUserException ex)
            {
                throw new ArgumentException($"Flm:SimHardware (--sim-hardware): {ex.Message}");
            }
        }
        if (Clustering is not ("localhost" or "redis"))
            throw new ArgumentException($"Flm:Clustering (--clustering) '{Clustering}' is not localhost or redis");
        if (Clustering == "redis" && string.IsNullOrWhiteSpace(Redis))
            throw new ArgumentException("Flm:Redis (--redis) must give the Redis connection string (e.g. localhost:6379) for redis clustering");
        foreach (var (name, port) in new[] { ("SiloPort", SiloPort), ("GatewayPort", GatewayPort), ("PrimarySiloPort", PrimarySiloPort) })
            if (port is <= 0 or > 65535)
                throw new ArgumentException($"Flm:{name} {port} is not a TCP port");
        if (!string.IsNullOrWhiteSpace(AdvertisedAddress) && !IPAddress.TryParse(AdvertisedAddress, out _))
            throw new ArgumentException($"Flm:AdvertisedAddress (--advertise) '{AdvertisedAddress}' is not an IP address");
        if (ProbeTimeoutSeconds <= 0 || MissedProbesLimit < 1 || VotesForDeathDeclaration < 1)
            throw new ArgumentException("Flm:ProbeTimeoutSeconds, MissedProbesLimit and VotesForDeathDeclaration must be positive");
        if (!double.IsFinite(ProbeTimeoutSeconds) || !double.IsFinite(CollectiveTimeoutSeconds) || !double.IsFinite(WorkerWaitSeconds) || !double.IsFinite(HangGraceSeconds)
            || CollectiveTimeoutSeconds <= 0 || WorkerWaitSeconds <= 0 || HangGraceSeconds <= 0)
            throw new ArgumentException("Flm:CollectiveTimeoutSeconds, Flm:WorkerWaitSeconds and Flm:HangGraceSeconds must be positive (finite) numbers of seconds");
        if (!FlmNodeOptions.DataPlanes.Contains(DataPlane))
            throw new ArgumentException($"Flm:DataPlane (--data-plane) '{DataPlane}' is not one of {string.Join(", ", FlmNodeOptions.DataPlanes)}");
    }
}
