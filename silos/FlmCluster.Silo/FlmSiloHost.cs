using System.Net;
using FlmCluster.Grains;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Sim;
using FlmCluster.Training.Sim;
using FlmCluster.Grains.History;
using FlmCluster.Silo.Dashboard;
using FlmCluster.Silo.Health;
using FlmCluster.Silo.Web;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Orleans.Configuration;
using Orleans.Dashboard;
using StackExchange.Redis;

namespace FlmCluster.Silo;

/// <summary>
/// Configures a host as one FlmCluster silo (a GPU server, or a control-plane node with cpu:0). A silo with a
/// web port (Flm:HttpPort) is a web application that also serves the dashboard (/), the Orleans dashboard
/// (/orleans), the health endpoints (/health/live, /health/ready) and, with the prometheus exporter, the scrape
/// endpoint (/metrics). A secure silo serves them over HTTPS to the cluster's clients only (<see cref="WebAccess"/>).
/// </summary>
public static class FlmSiloHost
{
    public const string OrleansDashboardPath = "/orleans";

    /// <summary>
    /// The host of one silo. <paramref name="configuration"/> (appsettings, environment, command line) also
    /// configures logging; <paramref name="telemetry"/> false leaves exporters out (a process that hosts several
    /// silos gives telemetry to one); <paramref name="grainStatistics"/> false leaves out the Orleans dashboard's
    /// collection of grain statistics (benchmark baselines).
    /// </summary>
    public static IHost Build(SiloSettings s, IConfiguration? configuration = null, bool telemetry = true, bool grainStatistics = true,
        LogLevel minimumLevel = LogLevel.Information, InProcessCluster? inProcess = null)
    {
        IHostApplicationBuilder builder;
        WebApplicationBuilder? web = null;
        if (s.HttpPort > 0)
        {
            web = WebApplication.CreateEmptyBuilder(new WebApplicationOptions { ContentRootPath = AppContext.BaseDirectory });
            // Secure: HTTPS with the silo's certificate (tokens and session cookies never cross the network in clear).
            var certificate = s.Secure ? ClusterCertificates.LoadWithKey(s.TlsCertificate, s.TlsKey, "Flm:TlsCertificate") : null;
            web.WebHost.UseKestrelCore().ConfigureKestrel(k =>
            {
                if (s.LoopbackOnly)
                    k.Listen(IPAddress.Loopback, s.HttpPort, Https);
                else
                    k.ListenAnyIP(s.HttpPort, Https);
            });
            if (certificate is not null)
                web.WebHost.UseKestrelHttpsConfiguration();
            web.Services.AddRouting();
            if (s.Secure)
                web.Services.AddFlmWebAccess();
            web.Services.AddFlmDashboard();

            void Https(Microsoft.AspNetCore.Server.Kestrel.Core.ListenOptions listen)
            {
                if (certificate is not null)
                    listen.UseHttps(certificate);
            }
            web.Services.AddSiloHealth(s);
            builder = web;
        }
        else
            builder = Host.CreateEmptyApplicationBuilder(new HostApplicationBuilderSettings { ContentRootPath = AppContext.BaseDirectory });
        if (configuration is not null)
        {
            builder.Configuration.AddConfiguration(configuration);
            builder.Logging.AddConfiguration(configuration.GetSection("Logging"));
            builder.Logging.AddSimpleConsole(o => o.SingleLine = true);
        }
        builder.Logging.SetMinimumLevel(minimumLevel);
        builder.UseFlmSilo(s, grainStatistics, inProcess);
        if (telemetry)
            builder.AddFlmTelemetry(s);
        if (web is null)
            return ((HostApplicationBuilder)builder).Build();
        var app = web.Build();
        if (s.Secure)
            app.UseFlmWebAccess();
        app.MapFlmDashboard();
        app.MapSiloHealth();
        if (grainStatistics)
            app.MapOrleansDashboard(OrleansDashboardPath);
        if (telemetry && s.ExporterList.Contains("prometheus"))
            app.MapPrometheusScrapingEndpoint();
        return app;
    }

    /// <param name="inProcess">
    /// For silos of a cluster inside one process (<see cref="LocalCluster"/>): the membership table they share and,
    /// for a simulated cluster, the simulation (one virtual clock). Without it, a silo given Flm:SimClock makes its
    /// own simulation, sharing modelled time through that file.
    /// </param>
    public static IHostApplicationBuilder UseFlmSilo(this IHostApplicationBuilder builder, SiloSettings s, bool grainStatistics = true, InProcessCluster? inProcess = null)
    {
        var simulation = inProcess?.Simulation;
        if (simulation is null && !string.IsNullOrWhiteSpace(s.SimClock))
        {
            var modelled = new SharedModelledTime(Path.GetFullPath(s.SimClock));
            var clock = new VirtualClock(modelled);
            // A new journal per process: a silo started again after a kill -9 does not append to a line the kill cut short.
            var ledger = string.IsNullOrWhiteSpace(s.SimLedger) ? null : new SampleLedger(Path.Combine(s.SimLedger, $"{s.Node}-{Environment.ProcessId}.ledger"));
            simulation = new FlmSimulation(new SimCluster(ClusterHardware.Load(s.SimHardware), CostConstants.Fitted), clock, ledger);
            builder.Services.AddSingleton(_ => modelled); // made by a factory: disposed with the host
            builder.Services.AddSingleton(_ => clock);
            if (ledger is not null)
                builder.Services.AddSingleton(_ => ledger);
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
                silo.ConfigureEndpoints(s.Advertised, s.SiloPort, s.GatewayPort, listenOnAnyHostAddress: !s.LoopbackOnly);
                silo.UseRedisClustering(o => o.ConfigurationOptions = ConfigurationOptions.Parse(s.Redis));
                silo.AddRedisGrainStorage(FlmSiloBuilderExtensions.StorageName, o => o.ConfigurationOptions = ConfigurationOptions.Parse(s.Redis));
                silo.UseRedisReminderService(o => o.ConfigurationOptions = ConfigurationOptions.Parse(s.Redis));
                silo.Services.AddSingleton<IJobHistoryStore>(sp => new RedisJobHistory(ConfigurationOptions.Parse(s.Redis), s.ServiceId));
                if (s.Kubernetes)
                    silo.UseKubernetesHosting();
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
                ReplicaBudgetBytes = s.ReplicaBudgetBytes,
                Roots = s.Roots,
                TorchThreads = s.TorchThreads,
                DataPlane = s.DataPlane,
                Simulation = simulation,
                Sockets = s.DataPlaneOptions,
                // Sim devices are the simulated hardware, whatever the silo says of its own.
                PeakFlops = simulation is not null && s.DeviceSpec.Kind == "sim" ? simulation.Cluster.Hardware.PeakFlops : s.PeakFlops,
                Access = s.LoadAccess(),
            });
            if (s.Secure)
                silo.UseClusterTls(ClusterCertificates.LoadWithKey(s.TlsCertificate, s.TlsKey, "Flm:TlsCertificate"), ClusterCertificates.LoadAuthority(s.TlsCa, "Flm:TlsCa"));
            silo.Services.AddSingleton<ILifecycleParticipant<ISiloLifecycle>>(sp => new SecurityModeLog(s, sp.GetRequiredService<ILoggerFactory>().CreateLogger("FlmCluster.Silo")));
            // Grain-level statistics for the Orleans dashboard, collected on every silo (shown by those with a web port),
            // every 5 s rather than every second: training servers' CPUs are for training (docs/benchmarks.md).
            if (grainStatistics)
                silo.AddDashboard(o => o.CounterUpdateIntervalMs = 5000);
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
