using System.Net;
using FlmCluster.Grains;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Training.Sim;
using FlmCluster.Grains.DataPlane.Sockets;
using FlmCluster.Grains.Security;
using FlmCluster.Training.Telemetry;
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

    /// <summary>Address other silos reach this one at (default: loopback when listening on loopback only, else this host's address).</summary>
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

    /// <summary>Replica memory this server holds for its workers' peers and itself, all jobs together (0: half the memory available to the process).</summary>
    public long ReplicaBudgetBytes { get; init; }

    public int TorchThreads { get; init; }

    /// <summary>Folders jobs may keep checkpoints in, separated by ':' (empty: the working folder and the system's temporary folder).</summary>
    public string CheckpointRoots { get; init; } = "";

    /// <summary>Folders jobs may read training data from, separated by ':' (empty: as for checkpoints).</summary>
    public string DataRoots { get; init; } = "";

    public FlmCluster.Grains.FileRoots Roots => FlmCluster.Grains.FileRoots.Parse(CheckpointRoots, DataRoots);

    /// <summary>How tensors travel between workers (<see cref="FlmNodeOptions.DataPlanes"/>).</summary>
    public string DataPlane { get; init; } = FlmNodeOptions.DataPlanes[0];

    /// <summary>
    /// For a silo of a simulated cluster (<c>flm sim --processes</c>): the file every silo of the cluster shares its
    /// modelled time through. Sim devices need it; a control-plane silo given it runs its jobs on the virtual clock.
    /// </summary>
    public string SimClock { get; init; } = "";

    /// <summary>What sim devices model: a hardware preset (dgx-a800, dgx-a100, dgx-h100, dgx-h200) or a JSON file.</summary>
    public string SimHardware { get; init; } = ClusterHardware.DgxA800.Name;

    /// <summary>
    /// A folder where this silo's sim devices journal the samples every step trained (one file per silo process), for
    /// checking a simulated cluster's sample accounting across processes. Empty: no journal.
    /// </summary>
    public string SimLedger { get; init; } = "";

    /// <summary>The socket data plane's port (0: any free port, published in the silo's metadata).</summary>
    public int DataPort { get; init; }

    /// <summary>PEM certificate and private key: TLS on every data connection (mutual); empty: plain TCP.</summary>
    public string DataTlsCertificate { get; init; } = "";
    public string DataTlsKey { get; init; } = "";

    /// <summary>PEM certificate of the authority peers' data certificates must chain to (empty: peers present the same certificate).</summary>
    public string DataTlsCa { get; init; } = "";

    /// <summary>A data connection silent this long (idle ones send a heartbeat every second) has lost its peer.</summary>
    public double DataSilenceSeconds { get; init; } = 10;

    /// <summary>The most MiB of one peer's tensors a worker keeps before it asks for them; beyond, the peer waits.</summary>
    public int DataBufferMiB { get; init; } = 64;

    /// <summary>
    /// This silo's certificate (PEM, with <see cref="TlsKey"/>; a .pfx holding both; or store:LOCATION/STORE/THUMBPRINT,
    /// a certificate store's with its key): secure mode, with mutual TLS
    /// between silos, TLS for clients and client authentication. Empty: open mode (development).
    /// </summary>
    public string TlsCertificate { get; init; } = "";
    public string TlsKey { get; init; } = "";

    /// <summary>The cluster's certificate authority: silos' certificates (OU=silo) chain to it, and by default clients' certificates.</summary>
    public string TlsCa { get; init; } = "";

    /// <summary>The authority clients' certificates (OU=operator or OU=viewer) must chain to (empty: <see cref="TlsCa"/>).</summary>
    public string ClientCa { get; init; } = "";

    /// <summary>A file holding the cluster key, a secret every silo of the cluster shares (secure mode).</summary>
    public string ClusterKeyFile { get; init; } = "";

    /// <summary>Files of client tokens, one per line: operators, viewers (secure mode; either may be empty).</summary>
    public string OperatorTokens { get; init; } = "";
    public string ViewerTokens { get; init; } = "";

    /// <summary>
    /// Where the silo's ports listen: <c>loopback</c> or <c>any</c> (all interfaces). Default: any in secure mode,
    /// loopback in open mode (an open silo reachable from the network would take anyone's jobs).
    /// </summary>
    public string Listen { get; init; } = "";

    public bool Secure => TlsCertificate.Length > 0;

    /// <summary>
    /// Running as a Kubernetes pod: Orleans' Kubernetes hosting takes the pod's name, namespace and address
    /// (POD_NAME, POD_NAMESPACE, POD_IP) and removes the silos of deleted pods from the membership.
    /// </summary>
    public bool Kubernetes { get; init; }

    /// <summary>Whether the silo, its gateway, data and web ports listen on loopback only.</summary>
    public bool LoopbackOnly => Listen switch { "loopback" => true, "any" => false, _ => !Secure };
    /// <summary>The silo's web port: the dashboard, the Orleans dashboard and the Prometheus scrape endpoint (0: none).</summary>
    public int HttpPort { get; init; } = 8080;

    /// <summary>Telemetry exporters, comma-separated, several at once: prometheus (/metrics on the web port), otlp, console; "none" for none.</summary>
    public string Exporters { get; init; } = "prometheus";

    /// <summary>OTLP collector base address (e.g. http://collector:4318 for http/protobuf, :4317 for grpc) when exporters include otlp.</summary>
    public string OtlpEndpoint { get; init; } = "";

    /// <summary>OTLP transport: http/protobuf or grpc.</summary>
    public string OtlpProtocol { get; init; } = "http/protobuf";

    /// <summary>The model of this server's accelerators (e.g. H100), for MFU against <see cref="DevicePeaks"/>.</summary>
    public string DeviceModel { get; init; } = "";

    /// <summary>Peak TFLOP/s of one device, for MFU; overrides the table (0: from <see cref="DeviceModel"/>, else unknown). CPU devices need it for MFU.</summary>
    public double PeakTflops { get; init; }

    public static readonly string[] ExporterNames = ["prometheus", "otlp", "console"];

    /// <summary>The exporters this silo runs (none for "none" or an empty list).</summary>
    public IReadOnlyList<string> ExporterList =>
        Exporters.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries) is var names && names is ["none"] ? [] : names;

    /// <summary>Peak FLOP/s of one device: the configured peak, else the table's for the device model; 0 when neither.</summary>
    public double PeakFlops => PeakTflops > 0 ? PeakTflops * 1e12 : DevicePeaks.Of(DeviceModel) ?? 0;

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
        ["--sim-ledger"] = "Flm:SimLedger",
        ["--data-port"] = "Flm:DataPort",
        ["--data-tls-cert"] = "Flm:DataTlsCertificate",
        ["--data-tls-key"] = "Flm:DataTlsKey",
        ["--data-tls-ca"] = "Flm:DataTlsCa",
        ["--checkpoint-roots"] = "Flm:CheckpointRoots",
        ["--data-roots"] = "Flm:DataRoots",
        ["--tls-cert"] = "Flm:TlsCertificate",
        ["--tls-key"] = "Flm:TlsKey",
        ["--tls-ca"] = "Flm:TlsCa",
        ["--client-ca"] = "Flm:ClientCa",
        ["--cluster-key"] = "Flm:ClusterKeyFile",
        ["--operator-tokens"] = "Flm:OperatorTokens",
        ["--viewer-tokens"] = "Flm:ViewerTokens",
        ["--listen"] = "Flm:Listen",
        ["--kubernetes"] = "Flm:Kubernetes",
        ["--http-port"] = "Flm:HttpPort",
        ["--exporters"] = "Flm:Exporters",
        ["--otlp-endpoint"] = "Flm:OtlpEndpoint",
        ["--device-model"] = "Flm:DeviceModel",
        ["--peak-tflops"] = "Flm:PeakTflops",
    };

    public static SiloSettings From(IConfiguration configuration)
    {
        var settings = configuration.GetSection("Flm").Get<SiloSettings>() ?? new SiloSettings();
        settings.Validate();
        return settings;
    }

    public DeviceSpec DeviceSpec => FlmCluster.Grains.DeviceSpec.Parse(Devices);

    public IPAddress Advertised => string.IsNullOrWhiteSpace(AdvertisedAddress)
        ? (LoopbackOnly ? IPAddress.Loopback : Dns.GetHostAddresses(Dns.GetHostName()).First(a => a.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork))
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
        if (!string.IsNullOrWhiteSpace(SimLedger) && string.IsNullOrWhiteSpace(SimClock))
            throw new ArgumentException("Flm:SimLedger (--sim-ledger) journals what sim devices train; give it with Flm:SimClock (--sim-clock), or leave it out");
        if (!string.IsNullOrWhiteSpace(SimLedger) && !Directory.Exists(SimLedger))
            throw new ArgumentException($"Flm:SimLedger (--sim-ledger) '{SimLedger}' is not a folder; create it or give an existing one");
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
        if (DataPort is < 0 or > 65535)
            throw new ArgumentException($"Flm:DataPort (--data-port) {DataPort} is not a TCP port (0: any free port)");
        if (HttpPort is < 0 or > 65535)
            throw new ArgumentException($"Flm:HttpPort (--http-port) {HttpPort} is not a TCP port (0 for no web endpoints)");
        ValidateTelemetry();
        if (!string.IsNullOrWhiteSpace(AdvertisedAddress) && !IPAddress.TryParse(AdvertisedAddress, out _))
            throw new ArgumentException($"Flm:AdvertisedAddress (--advertise) '{AdvertisedAddress}' is not an IP address");
        if (ProbeTimeoutSeconds <= 0 || MissedProbesLimit < 1 || VotesForDeathDeclaration < 1)
            throw new ArgumentException("Flm:ProbeTimeoutSeconds, MissedProbesLimit and VotesForDeathDeclaration must be positive");
        if (!double.IsFinite(ProbeTimeoutSeconds) || !double.IsFinite(CollectiveTimeoutSeconds) || !double.IsFinite(WorkerWaitSeconds) || !double.IsFinite(HangGraceSeconds)
            || CollectiveTimeoutSeconds <= 0 || WorkerWaitSeconds <= 0 || HangGraceSeconds <= 0)
            throw new ArgumentException("Flm:CollectiveTimeoutSeconds, Flm:WorkerWaitSeconds and Flm:HangGraceSeconds must be positive (finite) numbers of seconds");
        foreach (var (name, roots) in new[] { ("CheckpointRoots", Roots.Checkpoints), ("DataRoots", Roots.Data) })
            foreach (var root in roots.Where(r => !Path.IsPathFullyQualified(r)))
                throw new ArgumentException($"Flm:{name} root '{root}' is relative; list absolute folders separated by '{Path.PathSeparator}'");
        if (ReplicaBudgetBytes < 0)
            throw new ArgumentException($"Flm:ReplicaBudgetBytes {ReplicaBudgetBytes} is negative: give a number of bytes, or 0 for half the memory available to the silo");
        if (!FlmNodeOptions.DataPlanes.Contains(DataPlane))
            throw new ArgumentException($"Flm:DataPlane (--data-plane) '{DataPlane}' is not one of {string.Join(", ", FlmNodeOptions.DataPlanes)}");
        if (DataPlane == "nccl" && spec.Kind != "cuda")
            throw new ArgumentException($"Flm:DataPlane (--data-plane) nccl needs CUDA GPUs (--devices cuda:N) and a CUDA build (-p:FlmDevice=cuda); this server has {Devices}: use socket");
        if (!double.IsFinite(DataSilenceSeconds) || DataSilenceSeconds < 3)
            throw new ArgumentException($"Flm:DataSilenceSeconds {DataSilenceSeconds} must be at least 3 (idle connections send a heartbeat every second)");
        if (DataBufferMiB is < 1 or > 65536)
            throw new ArgumentException($"Flm:DataBufferMiB {DataBufferMiB} must be 1 … 65536");
        if ((DataTlsCertificate.Length > 0) != (DataTlsKey.Length > 0))
            throw new ArgumentException("Flm:DataTlsCertificate (--data-tls-cert) and Flm:DataTlsKey (--data-tls-key) go together: give both PEM files for TLS, or neither");
        foreach (var (name, file) in new[] { ("DataTlsCertificate", DataTlsCertificate), ("DataTlsKey", DataTlsKey), ("DataTlsCa", DataTlsCa) })
            if (file.Length > 0 && !File.Exists(file))
                throw new ArgumentException($"Flm:{name} '{file}' does not exist");
        if (DataTlsCa.Length > 0 && DataTlsCertificate.Length == 0)
            throw new ArgumentException("Flm:DataTlsCa is set without Flm:DataTlsCertificate; TLS on the data plane needs this silo's certificate and key");
        ValidateSecurity();
    }

    /// <summary>The socket data plane of this silo: it listens where the silo does and is reached at the advertised address.</summary>
    public SocketDataPlaneOptions DataPlaneOptions => new()
    {
        ListenAddress = LoopbackOnly ? IPAddress.Loopback : IPAddress.Any,
        AdvertisedAddress = Advertised,
        Port = DataPort,
        // A secure silo's data connections use its certificate unless the data plane has its own.
        TlsCertificate = DataTlsCertificate.Length > 0 || !Secure ? DataTlsCertificate : TlsCertificate,
        TlsKey = DataTlsCertificate.Length > 0 || !Secure ? DataTlsKey : TlsKey,
        TlsCa = DataTlsCertificate.Length > 0 || !Secure ? DataTlsCa : TlsCa,
        Silence = TimeSpan.FromSeconds(DataSilenceSeconds),
        PeerBufferBytes = (long)DataBufferMiB << 20,
    };

    private void ValidateSecurity()
    {
        if (Kubernetes && Clustering != "redis")
            throw new ArgumentException("Flm:Kubernetes needs Redis clustering (Flm:Clustering redis): pods come and go, the membership table must outlive them");
        if (Listen is not ("" or "loopback" or "any"))
            throw new ArgumentException($"Flm:Listen (--listen) '{Listen}' is not loopback or any");
        if (LoopbackOnly && !string.IsNullOrWhiteSpace(AdvertisedAddress) && IPAddress.TryParse(AdvertisedAddress, out var advertised) && !IPAddress.IsLoopback(advertised))
            throw new ArgumentException($"Flm:AdvertisedAddress {AdvertisedAddress} is not a loopback address, but the silo listens on loopback only; give Flm:Listen=any (and, for a network, secure mode: Flm:TlsCertificate)");
        var secureOnly = new[] { ("TlsKey", TlsKey), ("TlsCa", TlsCa), ("ClientCa", ClientCa), ("ClusterKeyFile", ClusterKeyFile), ("OperatorTokens", OperatorTokens), ("ViewerTokens", ViewerTokens) };
        if (!Secure)
        {
            if (secureOnly.FirstOrDefault(f => f.Item2.Length > 0) is { Item1.Length: > 0 } stray)
                throw new ArgumentException($"Flm:{stray.Item1} is set without Flm:TlsCertificate (--tls-cert); secure mode needs this silo's certificate");
            return;
        }
        var inStore = ClusterCertificates.IsStoreReference(TlsCertificate);
        if (inStore)
        {
            ClusterCertificates.ParseStoreReference(TlsCertificate, "Flm:TlsCertificate");
            if (TlsKey.Length > 0)
                throw new ArgumentException("Flm:TlsKey (--tls-key) is set, but Flm:TlsCertificate names a certificate store, which holds the key; give no key file");
        }
        else if (TlsKey.Length == 0 && !ClusterCertificates.IsPkcs12(TlsCertificate))
            throw new ArgumentException("Flm:TlsKey (--tls-key) must name the private key of Flm:TlsCertificate (PEM), or give a .pfx holding both, or store:CurrentUser/My/THUMBPRINT");
        if (TlsCa.Length == 0)
            throw new ArgumentException("Flm:TlsCa (--tls-ca) must name the cluster's certificate authority in secure mode (silos trust each other through it)");
        if (ClusterKeyFile.Length == 0)
            throw new ArgumentException("Flm:ClusterKeyFile (--cluster-key) must name the file of the cluster key in secure mode ('flm cluster credentials' makes one)");
        foreach (var (name, file) in inStore ? secureOnly : secureOnly.Prepend(("TlsCertificate", TlsCertificate)))
            if (file.Length > 0 && !File.Exists(file))
                throw new ArgumentException($"Flm:{name} '{file}' does not exist");
    }

    /// <summary>The access rules of this silo: from its files in secure mode, else open (null).</summary>
    public AccessOptions? LoadAccess() => Secure
        ? AccessOptions.FromFiles(ServiceId, ClusterKeyFile, OperatorTokens, ViewerTokens,
            ClusterCertificates.LoadAuthority(ClientCa.Length > 0 ? ClientCa : TlsCa, ClientCa.Length > 0 ? "Flm:ClientCa" : "Flm:TlsCa"))
        : null;

    private void ValidateTelemetry()
    {
        var exporters = ExporterList;
        if (exporters.FirstOrDefault(e => !ExporterNames.Contains(e)) is { } unknown)
            throw new ArgumentException($"Flm:Exporters (--exporters) '{unknown}' is not one of {string.Join(", ", ExporterNames)} (or none)");
        if (exporters.Contains("prometheus") && HttpPort == 0)
            throw new ArgumentException("Flm:Exporters: prometheus is served on the web port; give Flm:HttpPort (--http-port) or leave prometheus out");
        if (exporters.Contains("otlp")
            && !(Uri.TryCreate(OtlpEndpoint, UriKind.Absolute, out var otlp) && otlp.Scheme is "http" or "https"))
            throw new ArgumentException($"Flm:OtlpEndpoint (--otlp-endpoint) '{OtlpEndpoint}' must be an http(s) address such as http://collector:4318 when exporters include otlp");
        if (OtlpProtocol is not ("http/protobuf" or "grpc"))
            throw new ArgumentException($"Flm:OtlpProtocol '{OtlpProtocol}' is not http/protobuf or grpc");
        if (!double.IsFinite(PeakTflops) || PeakTflops < 0)
            throw new ArgumentException($"Flm:PeakTflops (--peak-tflops) {PeakTflops} must be a finite number of TFLOP/s, 0 or more");
    }
}
