using System.Net;
using FlmCluster.Grains;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Orleans.Configuration;
using StackExchange.Redis;

namespace FlmCluster.Silo;

/// <summary>Configures a generic host as one FlmCluster silo (a GPU server, or a control-plane node with cpu:0).</summary>
public static class FlmSiloHost
{
    public static IHostApplicationBuilder UseFlmSilo(this IHostApplicationBuilder builder, SiloSettings s)
    {
        builder.Services.Configure<HostOptions>(o => o.ShutdownTimeout = TimeSpan.FromSeconds(30));
        builder.UseOrleans(silo =>
        {
            silo.Configure<ClusterOptions>(o =>
            {
                o.ClusterId = s.ClusterId;
                o.ServiceId = s.ServiceId;
            });
            // Training nodes: a dead server is noticed in seconds, not the default ~15 s, without being trigger-happy.
            silo.Configure<ClusterMembershipOptions>(o =>
            {
                o.ProbeTimeout = TimeSpan.FromSeconds(s.ProbeTimeoutSeconds);
                o.NumMissedProbesLimit = s.MissedProbesLimit;
                o.NumVotesForDeathDeclaration = s.VotesForDeathDeclaration;
            });
            if (s.Clustering == "redis")
            {
                silo.ConfigureEndpoints(s.Advertised, s.SiloPort, s.GatewayPort, listenOnAnyHostAddress: true);
                silo.UseRedisClustering(o => o.ConfigurationOptions = ConfigurationOptions.Parse(s.Redis));
                silo.AddRedisGrainStorage(FlmSiloBuilderExtensions.StorageName, o => o.ConfigurationOptions = ConfigurationOptions.Parse(s.Redis));
                silo.UseRedisReminderService(o => o.ConfigurationOptions = ConfigurationOptions.Parse(s.Redis));
            }
            else
            {
                silo.ConfigureEndpoints(IPAddress.Loopback, s.SiloPort, s.GatewayPort);
                var primary = s.PrimarySiloPort == s.SiloPort ? null : new IPEndPoint(IPAddress.Loopback, s.PrimarySiloPort);
                silo.UseDevelopmentClustering(primary ?? new IPEndPoint(IPAddress.Loopback, s.SiloPort));
                silo.AddFlmFileStorage(Path.GetFullPath(s.StorageDir));
                silo.UseInMemoryReminderService();
            }
            silo.AddFlmNode(new FlmNodeOptions
            {
                Node = s.Node,
                Devices = s.DeviceSpec,
                CollectiveTimeout = TimeSpan.FromSeconds(s.CollectiveTimeoutSeconds),
                WorkerWait = TimeSpan.FromSeconds(s.WorkerWaitSeconds),
                TorchThreads = s.TorchThreads,
                DataPlane = s.DataPlane,
                Sockets = s.DataPlaneOptions,
            });
            if (!string.IsNullOrWhiteSpace(s.ReadyFile))
                silo.Services.AddSingleton<ILifecycleParticipant<ISiloLifecycle>>(new ReadyFile(s.ReadyFile));
        });
        return builder;
    }

    /// <summary>Writes a file once the silo is active, and removes it when the silo stops.</summary>
    private sealed class ReadyFile(string path) : ILifecycleParticipant<ISiloLifecycle>
    {
        public void Participate(ISiloLifecycle lifecycle) =>
            lifecycle.Subscribe(nameof(ReadyFile), ServiceLifecycleStage.Active,
                _ =>
                {
                    File.WriteAllText(path, $"{Environment.ProcessId}\n");
                    return Task.CompletedTask;
                },
                _ =>
                {
                    File.Delete(path);
                    return Task.CompletedTask;
                });
    }
}
