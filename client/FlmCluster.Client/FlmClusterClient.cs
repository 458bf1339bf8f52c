using System.Net;
using FlmCluster.Grains.Abstractions;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans.Configuration;
using StackExchange.Redis;

namespace FlmCluster.Client;

/// <summary>No cluster is configured or none answered: the CLI's exit code 69 (EX_UNAVAILABLE).</summary>
public sealed class ClusterUnavailableException(string message, Exception? inner = null) : Exception(message, inner);

/// <summary>An Orleans client connection to an FlmCluster, with the operations the CLI and other tools need.</summary>
public sealed class FlmClusterClient : IAsyncDisposable
{
    private readonly IHost _host;

    public IClusterClient Grains { get; }
    public ClusterProfile Profile { get; }

    private FlmClusterClient(IHost host, ClusterProfile profile)
    {
        _host = host;
        Profile = profile;
        Grains = host.Services.GetRequiredService<IClusterClient>();
    }

    /// <summary>Connects, retrying until <paramref name="timeout"/>; throws <see cref="ClusterUnavailableException"/> when nothing answers.</summary>
    public static async Task<FlmClusterClient> ConnectAsync(ClusterProfile profile, TimeSpan? timeout = null)
    {
        var deadline = DateTime.UtcNow + (timeout ?? TimeSpan.FromSeconds(10));
        // Nothing listening at all fails at once; the retries below are for a cluster that is there but busy.
        if (!await AnyListening(Endpoints(profile)))
            throw new ClusterUnavailableException($"no FlmCluster answered at {profile.Describe()} (nothing listens there); start one with 'flm cluster up' or check the connection settings");
        var builder = Host.CreateApplicationBuilder(new HostApplicationBuilderSettings { DisableDefaults = true });
        builder.Logging.SetMinimumLevel(LogLevel.Critical);
        builder.UseOrleansClient(client =>
        {
            client.Configure<ClusterOptions>(o =>
            {
                o.ClusterId = profile.ClusterId;
                o.ServiceId = profile.ServiceId;
            });
            if (profile.Clustering == "redis")
                client.UseRedisClustering(o => o.ConfigurationOptions = ConfigurationOptions.Parse(profile.Redis));
            else
                client.UseStaticClustering(profile.GatewayPorts.Select(p => new IPEndPoint(IPAddress.Loopback, p)).ToArray());
            client.UseConnectionRetryFilter(async (_, ct) =>
            {
                if (DateTime.UtcNow >= deadline)
                    return false;
                await Task.Delay(200, ct);
                return true;
            });
        });
        var host = builder.Build();
        try
        {
            await host.StartAsync();
        }
        catch (Exception ex)
        {
            host.Dispose();
            throw new ClusterUnavailableException($"no FlmCluster answered at {profile.Describe()}; start one with 'flm cluster up' or check the connection settings", ex);
        }
        return new FlmClusterClient(host, profile);
    }

    /// <summary>Where a client connects first: the gateways, or the Redis servers that hold the membership.</summary>
    private static List<(string Host, int Port)> Endpoints(ClusterProfile profile)
    {
        if (profile.Clustering != "redis")
            return profile.GatewayPorts.Select(p => (IPAddress.Loopback.ToString(), p)).ToList();
        ConfigurationOptions options;
        try
        {
            options = ConfigurationOptions.Parse(profile.Redis);
        }
        catch (ArgumentException ex)
        {
            throw new InvalidClusterProfileException($"Redis connection string '{profile.Redis}' is malformed ({ex.Message}); give e.g. localhost:6379");
        }
        return options.EndPoints.Select(e => e switch
        {
            DnsEndPoint dns => (dns.Host, dns.Port == 0 ? 6379 : dns.Port),
            IPEndPoint ip => (ip.Address.ToString(), ip.Port == 0 ? 6379 : ip.Port),
            _ => (e.ToString() ?? "", 6379),
        }).ToList();
    }

    /// <summary>Whether a TCP connection to any endpoint succeeds within <see cref="ProbeTimeout"/>.</summary>
    private static async Task<bool> AnyListening(IReadOnlyList<(string Host, int Port)> endpoints)
    {
        using var timeout = new CancellationTokenSource(ProbeTimeout);
        var probes = endpoints.Select(async e =>
        {
            try
            {
                using var tcp = new System.Net.Sockets.TcpClient();
                await tcp.ConnectAsync(e.Host, e.Port, timeout.Token);
                return true;
            }
            catch (Exception ex) when (ex is System.Net.Sockets.SocketException or OperationCanceledException)
            {
                return false;
            }
        });
        return (await Task.WhenAll(probes)).Any(up => up);
    }

    private static readonly TimeSpan ProbeTimeout = TimeSpan.FromSeconds(3);

    public IClusterSchedulerGrain Scheduler => Grains.GetGrain<IClusterSchedulerGrain>("cluster");

    public Task<string> Submit(JobSubmission submission) => Scheduler.Submit(submission);

    public Task<IReadOnlyList<JobStatus>> Jobs() => Read(() => Scheduler.ListJobs());

    public Task<ClusterInventory> Inventory() => Read(() => Scheduler.GetInventory());

    /// <summary>A job's status; an unknown id is a <see cref="ClusterRequestException"/>.</summary>
    public Task<JobStatus> Status(string jobId) => Read(() => Grains.GetGrain<IJobCoordinatorGrain>(jobId).GetStatus());

    /// <summary>A page of a job's durable history (steps from <paramref name="sinceStep"/>, events from index <paramref name="sinceEvent"/>).</summary>
    public Task<JobHistory> History(string jobId, long sinceStep, int sinceEvent, int max = JobHistory.MaxPage) =>
        Read(() => Grains.GetGrain<IJobCoordinatorGrain>(jobId).GetHistory(sinceStep, sinceEvent, max));

    /// <summary>Pauses a running job between steps (it keeps its GPUs); a job in another phase is a <see cref="ClusterRequestException"/>.</summary>
    public Task Pause(string jobId) => Grains.GetGrain<IJobCoordinatorGrain>(jobId).Pause();

    public Task Resume(string jobId) => Grains.GetGrain<IJobCoordinatorGrain>(jobId).Resume();

    /// <summary>How long a read keeps trying while the cluster does not answer.</summary>
    public static readonly TimeSpan ReadPatience = TimeSpan.FromMinutes(1);

    /// <summary>
    /// A read-only call, retried while messages cannot reach the cluster: when a server dies, so does the
    /// gateway this client may be using, and the client needs a moment to move to another one.
    /// </summary>
    private static async Task<T> Read<T>(Func<Task<T>> call)
    {
        var deadline = DateTime.UtcNow + ReadPatience;
        while (true)
        {
            try
            {
                return await call();
            }
            catch (Exception ex) when (ex is OrleansException or TimeoutException && DateTime.UtcNow < deadline)
            {
                await Task.Delay(500);
            }
        }
    }

    public async Task Cancel(string jobId)
    {
        if (!await Scheduler.Cancel(jobId))
            throw new ClusterRequestException($"no job '{jobId}' on this cluster; 'flm jobs' lists them");
    }

    /// <summary>Live state of every GPU worker of active nodes (workers on unreachable nodes report an error state).</summary>
    public async Task<IReadOnlyList<WorkerStatus>> Workers(ClusterInventory inventory)
    {
        var gpus = inventory.Nodes.Where(n => n.Status == "active").SelectMany(n => n.Gpus).ToList();
        return await Task.WhenAll(gpus.Select(async g =>
        {
            try
            {
                return await Grains.GetGrain<IGpuWorkerGrain>(g.Worker).GetStatus().WaitAsync(TimeSpan.FromSeconds(5));
            }
            catch (Exception ex)
            {
                return new WorkerStatus(g.Worker, WorkerState.Unreachable, null, -1, 0, ex.Message, "");
            }
        }));
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await _host.StopAsync(TimeSpan.FromSeconds(5));
        }
        finally
        {
            _host.Dispose();
        }
    }
}
