using FlmCluster.Grains;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Diagnostics.HealthChecks;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Diagnostics.HealthChecks;
using StackExchange.Redis;
using static TorchSharp.torch;

namespace FlmCluster.Silo.Health;

/// <summary>
/// The silo's health endpoints on its web port: /health/live answers while the process serves requests;
/// /health/ready when the silo is an active cluster member, its devices are there and its storage answers
/// (probes of orchestrators and 'flm cluster up' wait on it). Each answers 200 or 503 with the checks' results.
/// </summary>
public static class SiloHealth
{
    public const string LivePath = "/health/live";
    public const string ReadyPath = "/health/ready";
    private const string Ready = "ready";

    public static IServiceCollection AddSiloHealth(this IServiceCollection services, SiloSettings s)
    {
        var checks = services.AddHealthChecks()
            .AddCheck<MembershipCheck>("cluster", tags: [Ready])
            .AddCheck<DevicesCheck>("devices", tags: [Ready]);
        if (s.Clustering == "redis")
            services.AddSingleton(new RedisCheck(ConfigurationOptions.Parse(s.Redis)));
        else
            services.AddSingleton(new StorageFolderCheck(Path.GetFullPath(s.StorageDir)));
        checks.Add(new HealthCheckRegistration("storage",
            sp => s.Clustering == "redis" ? sp.GetRequiredService<RedisCheck>() : sp.GetRequiredService<StorageFolderCheck>(),
            HealthStatus.Unhealthy, [Ready], TimeSpan.FromSeconds(5)));
        return services;
    }

    public static void MapSiloHealth(this WebApplication app)
    {
        // Open on a secure silo too: orchestrators' probes carry no credentials, and the answers reveal only up or down.
        app.MapHealthChecks(LivePath, new HealthCheckOptions { Predicate = _ => false, ResponseWriter = Write }).AllowAnonymous();
        app.MapHealthChecks(ReadyPath, new HealthCheckOptions { Predicate = r => r.Tags.Contains(Ready), ResponseWriter = Write }).AllowAnonymous();
    }

    /// <summary>One line per check: "cluster: Healthy (active member S127.0.0.1:11111:…)".</summary>
    private static Task Write(HttpContext http, HealthReport report)
    {
        http.Response.ContentType = "text/plain; charset=utf-8";
        var lines = report.Entries.Select(e => $"{e.Key}: {e.Value.Status}{(e.Value.Description is { } d ? $" ({d})" : "")}");
        return http.Response.WriteAsync($"{report.Status}\n{string.Join("", lines.Select(l => l + "\n"))}");
    }
}

/// <summary>Ready when this silo is an active member of its cluster.</summary>
internal sealed class MembershipCheck(IClusterMembershipService membership, ILocalSiloDetails silo) : IHealthCheck
{
    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var status = membership.CurrentSnapshot.GetSiloStatus(silo.SiloAddress);
        return Task.FromResult(status == SiloStatus.Active
            ? HealthCheckResult.Healthy($"active member {silo.SiloAddress}")
            : HealthCheckResult.Unhealthy($"silo {silo.SiloAddress} is {status}, not an active member"));
    }
}

/// <summary>Ready when the devices the silo offers are there: CUDA devices counted by libtorch once; CPU devices always are.</summary>
internal sealed class DevicesCheck(FlmNodeOptions node) : IHealthCheck
{
    private readonly Lazy<int> _cudaDevices = new(() => cuda.is_available() ? cuda.device_count() : 0);

    public Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        if (node.Devices.Kind != "cuda")
            return Task.FromResult(HealthCheckResult.Healthy($"{node.Devices}"));
        var found = _cudaDevices.Value;
        return Task.FromResult(found >= node.Devices.Count
            ? HealthCheckResult.Healthy($"{node.Devices}, {found} CUDA device(s) found")
            : HealthCheckResult.Unhealthy($"{node.Devices} configured, {found} CUDA device(s) found"));
    }
}

/// <summary>Ready when the Redis that holds membership, grain state and reminders answers a ping.</summary>
internal sealed class RedisCheck(ConfigurationOptions options) : IHealthCheck, IDisposable
{
    private static readonly TimeSpan Patience = TimeSpan.FromSeconds(3);

    private readonly Lazy<Task<ConnectionMultiplexer>> _redis = new(() =>
    {
        var retrying = options.Clone();
        retrying.AbortOnConnectFail = false;
        return ConnectionMultiplexer.ConnectAsync(retrying);
    });

    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        try
        {
            var latency = await (await _redis.Value).GetDatabase().PingAsync().WaitAsync(Patience, cancellationToken);
            return HealthCheckResult.Healthy($"Redis answered in {latency.TotalMilliseconds:0.0} ms");
        }
        catch (Exception ex) when (ex is RedisException or TimeoutException)
        {
            return HealthCheckResult.Unhealthy($"Redis does not answer: {ex.Message}");
        }
    }

    public void Dispose()
    {
        if (_redis.IsValueCreated && _redis.Value.IsCompletedSuccessfully)
            _redis.Value.Result.Dispose();
    }
}

/// <summary>Ready when the folder that holds grain state (development clustering) takes a file.</summary>
internal sealed class StorageFolderCheck(string folder) : IHealthCheck
{
    public async Task<HealthCheckResult> CheckHealthAsync(HealthCheckContext context, CancellationToken cancellationToken = default)
    {
        var probe = Path.Combine(folder, $".health-{Environment.ProcessId}");
        try
        {
            Directory.CreateDirectory(folder);
            await File.WriteAllTextAsync(probe, "ok", cancellationToken);
            File.Delete(probe);
            return HealthCheckResult.Healthy($"{folder} is writable");
        }
        catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
        {
            return HealthCheckResult.Unhealthy($"{folder} is not writable: {ex.Message}");
        }
    }
}
