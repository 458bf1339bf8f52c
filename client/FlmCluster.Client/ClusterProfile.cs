using System.Text.Json;

namespace FlmCluster.Client;

/// <summary>
/// How to reach a cluster: development clustering (the gateway ports of its silos on this machine) or Redis
/// membership, the cluster and service ids, and for a secure cluster its authority and this client's credentials
/// (files: a token, or a certificate and key; secrets never go on a command line). Stored by 'flm cluster up' in a
/// profile file; the environment variables FLM_CLUSTER_REDIS and FLM_CLUSTER_GATEWAYS (comma-separated ports)
/// override where it is, FLM_CLUSTER_ID its cluster id, FLM_TLS_CA, FLM_TOKEN_FILE, FLM_CLIENT_CERT and
/// FLM_CLIENT_KEY the credentials.
/// </summary>
public sealed record ClusterProfile
{
    public string Clustering { get; init; } = "localhost";
    public IReadOnlyList<int> GatewayPorts { get; init; } = [];
    public string Redis { get; init; } = "";
    public string ClusterId { get; init; } = "flm";
    public string ServiceId { get; init; } = "flmcluster";

    /// <summary>The cluster's certificate authority (PEM): the client speaks TLS to gateways whose certificates chain to it. Empty: plain TCP.</summary>
    public string TlsCa { get; init; } = "";

    /// <summary>A file holding this client's token (operator or viewer).</summary>
    public string TokenFile { get; init; } = "";

    /// <summary>This client's certificate (PEM, with <see cref="ClientKey"/>; or a .pfx holding both), OU=operator or OU=viewer.</summary>
    public string ClientCertificate { get; init; } = "";
    public string ClientKey { get; init; } = "";

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
        var gateways = Environment.GetEnvironmentVariable("FLM_CLUSTER_GATEWAYS");
        path ??= DefaultPath;
        var profile = !string.IsNullOrWhiteSpace(redis) ? new ClusterProfile { Clustering = "redis", Redis = redis }
            : !string.IsNullOrWhiteSpace(gateways) ? new ClusterProfile { GatewayPorts = gateways.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(ParsePort).ToList() }
            : File.Exists(path) ? Load(path)
            : null;
        return profile?.WithEnvironment();
    }

    /// <summary>The profile with the cluster id and credential files the environment names instead of its own.</summary>
    private ClusterProfile WithEnvironment()
    {
        static string? Env(string name) => Environment.GetEnvironmentVariable(name) is { Length: > 0 } value ? value : null;
        var token = Env("FLM_TOKEN_FILE");
        var certificate = Env("FLM_CLIENT_CERT");
        return this with
        {
            ClusterId = Env("FLM_CLUSTER_ID") ?? ClusterId,
            TlsCa = Env("FLM_TLS_CA") ?? TlsCa,
            // One kind of credential at a time: a token from the environment replaces the profile's certificate, and the other way round.
            TokenFile = token ?? (certificate is null ? TokenFile : ""),
            ClientCertificate = certificate ?? (token is null ? ClientCertificate : ""),
            ClientKey = Env("FLM_CLIENT_KEY") ?? (token is null && certificate is null ? ClientKey : ""),
        };
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
/// A silo process of a local cluster, with the arguments it was started with (to start it again); HttpPort serves
/// its dashboards, /metrics and the health endpoints 'flm cluster up' waits on (0: none).
/// </summary>
public sealed record SiloProcess(string Node, int Pid, int SiloPort, int GatewayPort, string Log, IReadOnlyList<string>? Args = null, int HttpPort = 0);
