using System.Text.Json;
using FlmCluster.Training.Config;

namespace FlmCluster.Training.Sim;

/// <summary>
/// The hardware a simulated cluster is made of: its GPUs, the links between them, host copies and storage.
/// Every figure is a vendor specification or a stated assumption (docs/simulation.md lists each with its
/// source); nothing here is fitted. Bandwidths are bytes per second in one direction, latencies seconds.
/// </summary>
public sealed record ClusterHardware
{
    public string Name { get; init; } = "";

    public int GpusPerServer { get; init; } = 8;

    /// <summary>Dense bf16 tensor-core peak of one GPU, FLOP/s.</summary>
    public double PeakFlops { get; init; }

    /// <summary>Memory of one GPU.</summary>
    public long DeviceMemoryBytes { get; init; }

    /// <summary>One GPU's memory bandwidth.</summary>
    public double MemoryBandwidth { get; init; }

    /// <summary>NVLink bandwidth of one GPU, each direction (through the server's NVSwitches to any other GPU of the server).</summary>
    public double NvlinkBandwidth { get; init; }

    /// <summary>Start-up time of one step of a collective over NVLink.</summary>
    public double NvlinkLatency { get; init; }

    /// <summary>Network bandwidth of one GPU's own adapter, each direction (InfiniBand between servers).</summary>
    public double NetworkBandwidth { get; init; }

    /// <summary>Start-up time of one step of a collective between servers.</summary>
    public double NetworkLatency { get; init; }

    /// <summary>Device-to-host (and back) copy bandwidth of one GPU when every GPU of the server copies at once.</summary>
    public double HostCopyBandwidth { get; init; }

    /// <summary>What the shared checkpoint storage writes, all servers together.</summary>
    public double StorageWriteBandwidth { get; init; }

    /// <summary>What the shared checkpoint storage reads, all servers together.</summary>
    public double StorageReadBandwidth { get; init; }

    private const double GB = 1e9;
    private const long GiB = 1L << 30;

    /// <summary>
    /// 24 DGX-A800 servers as FLM-101B used: A800 80GB SXM (A100's compute and memory, NVLink cut to 400 GB/s),
    /// eight 200 Gb/s HDR InfiniBand adapters per server, one per GPU (the DGX A100 design).
    /// </summary>
    public static ClusterHardware DgxA800 { get; } = new()
    {
        Name = "dgx-a800",
        PeakFlops = 312e12,
        DeviceMemoryBytes = 80 * GiB,
        MemoryBandwidth = 2039 * GB,
        NvlinkBandwidth = 200 * GB,
        NvlinkLatency = 5e-6,
        NetworkBandwidth = 25 * GB,
        NetworkLatency = 10e-6,
        HostCopyBandwidth = 16 * GB,
        StorageWriteBandwidth = 20 * GB,
        StorageReadBandwidth = 40 * GB,
    };

    /// <summary>DGX A100: as DGX-A800 with the full 600 GB/s NVLink.</summary>
    public static ClusterHardware DgxA100 { get; } = DgxA800 with { Name = "dgx-a100", NvlinkBandwidth = 300 * GB };

    /// <summary>DGX H100: 989 TFLOP/s dense bf16, 80 GB HBM3 at 3.35 TB/s, 900 GB/s NVLink, 400 Gb/s NDR adapters, PCIe Gen5.</summary>
    public static ClusterHardware DgxH100 { get; } = DgxA800 with
    {
        Name = "dgx-h100",
        PeakFlops = 989e12,
        MemoryBandwidth = 3350 * GB,
        NvlinkBandwidth = 450 * GB,
        NetworkBandwidth = 50 * GB,
        HostCopyBandwidth = 32 * GB,
    };

    /// <summary>DGX H200: the H100's compute with 141 GB HBM3e at 4.8 TB/s.</summary>
    public static ClusterHardware DgxH200 { get; } = DgxH100 with { Name = "dgx-h200", DeviceMemoryBytes = 141L * 1_000_000_000, MemoryBandwidth = 4800 * GB };

    private static readonly IReadOnlyDictionary<string, ClusterHardware> Presets = new Dictionary<string, ClusterHardware>(StringComparer.OrdinalIgnoreCase)
    {
        [DgxA800.Name] = DgxA800,
        [DgxA100.Name] = DgxA100,
        [DgxH100.Name] = DgxH100,
        [DgxH200.Name] = DgxH200,
    };

    public static IReadOnlyCollection<string> PresetNames => [.. Presets.Keys];

    /// <summary>A preset by name, or a JSON file of these fields (snake_case; a missing field keeps dgx-a800's value).</summary>
    public static ClusterHardware Load(string nameOrPath)
    {
        if (Presets.TryGetValue(nameOrPath, out var preset))
            return preset;
        if (!File.Exists(nameOrPath))
            throw new FlmUserException($"hardware '{nameOrPath}' is neither a preset ({string.Join(", ", PresetNames)}) nor a JSON file");
        ClusterHardware loaded;
        try
        {
            loaded = JsonSerializer.Deserialize<ClusterHardware>(File.ReadAllText(nameOrPath), JobConfigLoader.JsonOptions) ?? DgxA800;
        }
        catch (JsonException ex)
        {
            throw new FlmUserException($"hardware file '{nameOrPath}' is not valid JSON of hardware fields: {ex.Message}");
        }
        var merged = Merge(loaded);
        merged.Validate(nameOrPath);
        return merged;
    }

    /// <summary>Fields a file leaves at zero take dgx-a800's value.</summary>
    private static ClusterHardware Merge(ClusterHardware h) => h with
    {
        Name = h.Name.Length > 0 ? h.Name : "custom",
        GpusPerServer = h.GpusPerServer > 0 ? h.GpusPerServer : DgxA800.GpusPerServer,
        PeakFlops = Or(h.PeakFlops, DgxA800.PeakFlops),
        DeviceMemoryBytes = h.DeviceMemoryBytes != 0 ? h.DeviceMemoryBytes : DgxA800.DeviceMemoryBytes,
        MemoryBandwidth = Or(h.MemoryBandwidth, DgxA800.MemoryBandwidth),
        NvlinkBandwidth = Or(h.NvlinkBandwidth, DgxA800.NvlinkBandwidth),
        NvlinkLatency = Or(h.NvlinkLatency, DgxA800.NvlinkLatency),
        NetworkBandwidth = Or(h.NetworkBandwidth, DgxA800.NetworkBandwidth),
        NetworkLatency = Or(h.NetworkLatency, DgxA800.NetworkLatency),
        HostCopyBandwidth = Or(h.HostCopyBandwidth, DgxA800.HostCopyBandwidth),
        StorageWriteBandwidth = Or(h.StorageWriteBandwidth, DgxA800.StorageWriteBandwidth),
        StorageReadBandwidth = Or(h.StorageReadBandwidth, DgxA800.StorageReadBandwidth),
    };

    private static double Or(double value, double fallback) => value != 0 ? value : fallback;

    /// <summary>Every figure positive and finite; throws <see cref="FlmUserException"/> naming the field.</summary>
    public void Validate(string where)
    {
        foreach (var (name, value) in new[]
                 {
                     ("peak_flops", PeakFlops), ("memory_bandwidth", MemoryBandwidth), ("nvlink_bandwidth", NvlinkBandwidth),
                     ("nvlink_latency", NvlinkLatency), ("network_bandwidth", NetworkBandwidth), ("network_latency", NetworkLatency),
                     ("host_copy_bandwidth", HostCopyBandwidth), ("storage_write_bandwidth", StorageWriteBandwidth),
                     ("storage_read_bandwidth", StorageReadBandwidth), ("device_memory_bytes", DeviceMemoryBytes),
                 })
            if (!double.IsFinite(value) || value <= 0)
                throw new FlmUserException($"{where}: {name} must be a positive finite number (got {value})");
        if (GpusPerServer is < 1 or > 1024)
            throw new FlmUserException($"{where}: gpus_per_server must be between 1 and 1024 (got {GpusPerServer})");
    }
}
