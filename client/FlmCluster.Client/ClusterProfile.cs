using System.Text.Json;

namespace FlmCluster.Client;

/// <summary>
/// How to reach a cluster: development clustering (the gateway ports of its silos on this machine) or Redis
/// membership, plus the cluster and service ids. Stored by 'flm cluster up' in a profile file; the
/// environment variables FLM_CLUSTER_REDIS and FLM_CLUSTER_GATEWAYS (comma-separated ports) override it.
/// </summary>
public sealed record ClusterProfile
{
    public string Clustering { get; init; } = "localhost";
    public IReadOnlyList<int> GatewayPorts { get; init; } = [];
    public string Redis { get; init; } = "";
    public string ClusterId { get; init; } = "flm";
    public string ServiceId { get; init; } = "flmcluster";

    /// <summary>Silo processes started by 'flm cluster up' (to stop them), with their log files.</summary>
    public IReadOnlyList<SiloProcess> Silos { get; init; } = [];

    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower };

    /// <summary>The profile file: FLM_PROFILE, else ~/.flm/cluster.json.</summary>
    public static string DefaultPath =>
        Environment.GetEnvironmentVariable("FLM_PROFILE") is { Length: > 0 } path
            ? path
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".flm", "cluster.json");

    /// <summary>The configured cluster (environment first, then the profile file), or null when none is configured.</summary>
    public static ClusterProfile? Configured(string? path = null)
    {
        var redis = Environment.GetEnvironmentVariable("FLM_CLUSTER_REDIS");
        if (!string.IsNullOrWhiteSpace(redis))
            return new ClusterProfile { Clustering = "redis", Redis = redis };
        var gateways = Environment.GetEnvironmentVariable("FLM_CLUSTER_GATEWAYS");
        if (!string.IsNullOrWhiteSpace(gateways))
            return new ClusterProfile { GatewayPorts = gateways.Split(',', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToList() };
        path ??= DefaultPath;
        return File.Exists(path) ? Load(path) : null;
    }

    public static ClusterProfile Load(string path) =>
        JsonSerializer.Deserialize<ClusterProfile>(File.ReadAllText(path), Json) ?? throw new InvalidDataException($"{path} is empty");

    public void Save(string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        File.WriteAllText(path, JsonSerializer.Serialize(this, Json));
    }

    public string Describe() => Clustering == "redis" ? $"Redis {Redis}" : $"gateways 127.0.0.1:{string.Join(",", GatewayPorts)}";
}

/// <summary>A silo process of a local cluster.</summary>
public sealed record SiloProcess(string Node, int Pid, int SiloPort, int GatewayPort, string Log);
