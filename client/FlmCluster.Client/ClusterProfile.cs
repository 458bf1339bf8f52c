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

    private static readonly JsonSerializerOptions Json = new() { WriteIndented = true, PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, RespectNullableAnnotations = true };

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
            return new ClusterProfile { GatewayPorts = gateways.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(ParsePort).ToList() };
        path ??= DefaultPath;
        return File.Exists(path) ? Load(path) : null;
    }

    private static int ParsePort(string text) =>
        int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var port) && port is >= 1 and <= 65535
            ? port
            : throw new InvalidClusterProfileException($"FLM_CLUSTER_GATEWAYS: '{text}' is not a port (1 … 65535); give comma-separated gateway ports, e.g. FLM_CLUSTER_GATEWAYS=12111,12112");

    /// <summary>Reads a profile file; a file that is not a profile is an <see cref="InvalidClusterProfileException"/>.</summary>
    public static ClusterProfile Load(string path)
    {
        ClusterProfile? profile;
        try
        {
            profile = JsonSerializer.Deserialize<ClusterProfile>(File.ReadAllText(path), Json);
        }
        catch (JsonException ex)
        {
            throw new InvalidClusterProfileException($"cluster profile {path} is not readable ({ex.Message}); fix it, or delete it and run 'flm cluster up'");
        }
        if (profile is null || profile.GatewayPorts.Any(p => p is < 1 or > 65535))
            throw new InvalidClusterProfileException($"cluster profile {path} is not a valid profile; fix it, or delete it and run 'flm cluster up'");
        return profile;
    }

    public void Save(string path)
    {
        Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
        File.WriteAllText(path, JsonSerializer.Serialize(this, Json));
    }

    public string Describe() => Clustering == "redis" ? $"Redis {Redis}" : $"gateways 127.0.0.1:{string.Join(",", GatewayPorts)}";
}

/// <summary>The cluster settings (profile file or environment) are malformed: bad input, not an unreachable cluster.</summary>
public sealed class InvalidClusterProfileException(string message) : Exception(message);

/// <summary>
/// A silo process of a local cluster, with the arguments it was started with (to start it again) and its ready
/// file; HttpPort serves its dashboards and /metrics (0: none).
/// </summary>
public sealed record SiloProcess(string Node, int Pid, int SiloPort, int GatewayPort, string Log, IReadOnlyList<string>? Args = null, string? ReadyFile = null,
    int HttpPort = 0);
