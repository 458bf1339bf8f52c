using System.Net;
using FlmCluster.Grains;
using FlmCluster.Grains.Sim;
using FlmCluster.Training.Sim;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Orleans.Configuration;
using StackExchange.Redis;

namespace FlmCluster.Silo;

/// <summary>Configures a generic host as one FlmCluster silo (a GPU server, or a control-plane node with cpu:0).</summary>
public static class FlmSiloHost
{
    /// <param name="inProcess">
    /// For silos of a cluster inside one process (<see cref="LocalCluster"/>): the membership table they share and,
    /// for a simulated cluster, the simulation (one virtual clock). Without it, a silo given Flm:SimClock makes its
    /// own simulation, sharing modelled time through that file.
    /// </param>
    public static IHostApplicationBuilder UseFlmSilo(this IHostApplicationBuilder builder, SiloSettings s, InProcessCluster? inProcess = null)
    {
        var simulation = inProcess?.Simulation;
        if (simulation is null && !string.IsNullOrWhiteSpace(s.SimClock))
        {
            var modelled = new SharedModelledTime(Path.GetFullPath(s.SimClock));
            var clock = new VirtualClock(modelled);
            simulation = new FlmSimulation(new SimCluster(ClusterHardware.Load(s.SimHardware), CostConstants.Fitted), clock);
            builder.Services.AddSingleton(_ => modelled); // made by a factory: disposed with the host
            builder.Services.AddSingleton(_ => clock);
        }
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
                if (inProcess is not null)
                    silo.Services.AddSingleton<IMembershipTable>(inProcess.Membership);
                else
                    silo.UseDevelopmentClustering(new IPEndPoint(IPAddress.Loopback, s.PrimarySiloPort));
                silo.AddFlmFileStorage(Path.GetFullPath(s.StorageDir));
                silo.UseInMemoryReminderService();
            }
            silo.AddFlmNode(new FlmNodeOptions
            {
                Node = s.Node,
                Devices = s.DeviceSpec,
                CollectiveTimeout = TimeSpan.FromSeconds(s.CollectiveTimeoutSeconds),
                WorkerWait = TimeSpan.FromSeconds(s.WorkerWaitSeconds),
                HangGrace = TimeSpan.FromSeconds(s.HangGraceSeconds),
                TorchThreads = s.TorchThreads,
                DataPlane = s.DataPlane,
                Simulation = simulation,
            });
            if (!string.IsNullOrWhiteSpace(s.ReadyFile))
                silo.Services.AddSingleton<ILifecycleParticipant<ISiloLifecycle>>(new ReadyFile(s.ReadyFile));
        });
        return builder;
    }

    /// <summary>What the silos of a cluster inside one process share: their membership table, and a simulation when they are simulated.</summary>
    public sealed record InProcessCluster(InProcessMembershipTable Membership, FlmSimulation? Simulation);

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
