using System.Diagnostics;
using System.Text.Json;
using FlmCluster.Client;
using FlmCluster.Grains.Sim;
using FlmCluster.Silo.Sim;
using FlmCluster.Training;
using FlmCluster.Training.Config;
using FlmCluster.Training.Sim;
using StackExchange.Redis;

namespace FlmCluster.Cli.Sim;

/// <summary>Where a twin's silo processes listen and meet.</summary>
/// <param name="Redis">The Redis that holds membership, grain state, reminders and job history.</param>
/// <param name="BasePort">Silo ports start here; gateways at +1000, web ports at +2000.</param>
public sealed record ProcessTwinOptions(string Redis, int BasePort);

/// <summary>
/// A twin's cluster as silo processes on this machine, on Redis, as on real servers: a control-plane silo and one
/// silo of sim devices per server, started like 'flm cluster up --sim'; a server's loss is kill -9 of its process
/// and its repair a new process with the same arguments. The silos share the virtual clock through a memory-mapped
/// file and journal the samples their steps trained (merged here for the ledger). The cluster has its own cluster
/// and service ids, so a shared Redis keeps it apart; its keys are deleted afterwards.
/// </summary>
public sealed class ProcessTwinCluster : ITwinCluster
{
    /// <summary>The silo without devices for coordinators and the scheduler, started first.</summary>
    public const string ControlNode = "control";

    private readonly List<SiloProcess> _silos;
    private readonly ClusterProfile _profile;
    private readonly FlmClusterClient _client;
    private readonly SharedModelledTime _modelled;
    private readonly VirtualClock _clock;
    private readonly string _ledger;
    private TimeSpan _cpuOfKilled;

    private ProcessTwinCluster(List<SiloProcess> silos, ClusterProfile profile, FlmClusterClient client, SharedModelledTime modelled, VirtualClock clock, string ledger)
    {
        (_silos, _profile, _client, _modelled, _clock, _ledger) = (silos, profile, client, modelled, clock, ledger);
    }

    /// <summary>Checks that Redis answers, before anything starts: an unreachable Redis is bad input.</summary>
    public static async Task RequireRedis(string redis)
    {
        ConfigurationOptions options;
        try
        {
            options = ConfigurationOptions.Parse(redis);
        }
        catch (ArgumentException ex)
        {
            throw new FlmUserException($"--redis '{redis}' is not a Redis connection string ({ex.Message}); give HOST:PORT, e.g. localhost:6379");
        }
        options.AbortOnConnectFail = true;
        options.ConnectTimeout = 3000;
        try
        {
            await using var connection = await ConnectionMultiplexer.ConnectAsync(options);
            await connection.GetDatabase().PingAsync();
        }
        catch (RedisException)
        {
            throw new FlmUserException($"--redis {redis}: no Redis answers there; start redis-server (apt-get install redis-server) or give --redis HOST:PORT of one that runs");
        }
    }

    public static async Task<ITwinCluster> StartAsync(TwinClusterSpec spec, ProcessTwinOptions options, CancellationToken cancel)
    {
        var home = Directory.CreateDirectory(spec.Dir).FullName;
        Directory.CreateDirectory(Path.Combine(home, "logs"));
        var ledger = Directory.CreateDirectory(Path.Combine(home, "ledger")).FullName;
        var hardware = Path.Combine(home, "hardware.json");
        await File.WriteAllTextAsync(hardware, JsonSerializer.Serialize(spec.Hardware.Hardware, JobConfigLoader.JsonOptions), cancel);
        var clockFile = Path.Combine(home, "sim-clock");
        var modelled = new SharedModelledTime(clockFile); // created here, at zero, before any silo maps it
        var clock = new VirtualClock(modelled);
        var id = $"flm-sim-{Guid.NewGuid():N}"[..20];
        var profile = new ClusterProfile { Clustering = "redis", Redis = options.Redis, ClusterId = id, ServiceId = id };
        var silos = new List<SiloProcess>();
        FlmClusterClient? client = null;
        try
        {
            var nodes = new List<(string Node, string Devices)> { (ControlNode, "cpu:0") };
            nodes.AddRange(Enumerable.Range(0, spec.Servers).Select(i => ($"node{i}", $"sim:{spec.Hardware.Hardware.GpusPerServer}")));
            for (var i = 0; i < nodes.Count; i++)
            {
                var args = LocalSilos.Arguments(nodes[i].Node, nodes[i].Devices, i, options.BasePort, id, home);
                args.AddRange(["--service-id", id, "--clustering", "redis", "--redis", options.Redis,
                    "--sim-clock", clockFile, "--sim-hardware", hardware, "--sim-ledger", ledger]);
                var log = Path.Combine(home, "logs", $"{nodes[i].Node}.log");
                silos.Add(new SiloProcess(nodes[i].Node, LocalSilos.Start(args, log), options.BasePort + i, LocalSilos.GatewayPort(options.BasePort, i), log, args,
                    LocalSilos.WebPort(options.BasePort, i)));
            }
            // Every silo starts at once; on a small machine dozens of them take minutes to become active.
            var timeout = TimeSpan.FromSeconds(60 + 10 * silos.Count);
            var watch = Stopwatch.StartNew();
            foreach (var silo in silos)
                if (await LocalSilos.WaitReady(profile, silo, watch, timeout, cancel) is { } problem)
                    throw new FlmUserException(problem);
            client = await FlmClusterClient.ConnectAsync(profile, TimeSpan.FromSeconds(30));
            // Ready when the scheduler sees every server's GPUs.
            while ((await client.Inventory()).Nodes.Count(n => n.Status == "active" && n.Gpus.Count > 0) < spec.Servers)
            {
                if (watch.Elapsed > timeout)
                    throw new FlmUserException($"the silos started but the scheduler does not see all {spec.Servers} servers within {timeout.TotalSeconds:0} s; see the logs in {Path.Combine(home, "logs")}");
                await Task.Delay(200, cancel);
            }
            return new ProcessTwinCluster(silos, profile, client, modelled, clock, ledger);
        }
        catch
        {
            if (client is not null)
                await client.DisposeAsync();
            foreach (var silo in silos)
                LocalSilos.KillNow(silo.Pid);
            await DeleteKeys(options.Redis, id);
            clock.Dispose();
            modelled.Dispose();
            throw;
        }
    }

    public IReadOnlyList<string> Nodes => [.. _silos.Select(s => s.Node)];

    public IGrainFactory Grains => _client.Grains;

    public VirtualClock Clock => _clock;

    public bool IsRunning(string node) => LocalSilos.IsAlive(Silo(node).Pid);

    public Task KillAsync(string node)
    {
        var silo = Silo(node);
        _cpuOfKilled += LocalSilos.CpuTime(silo.Pid); // what it used, read before it is gone
        LocalSilos.KillNow(silo.Pid);
        return WaitUntil(() => !LocalSilos.IsAlive(silo.Pid));
    }

    public async Task StartAsync(string node)
    {
        var silo = Silo(node);
        if (LocalSilos.IsAlive(silo.Pid))
            throw new InvalidOperationException($"node {node} is running");
        var restarted = silo with { Pid = LocalSilos.Start(silo.Args!, silo.Log, append: true) };
        _silos[_silos.IndexOf(silo)] = restarted;
        if (await LocalSilos.WaitReady(_profile, restarted, Stopwatch.StartNew(), TimeSpan.FromMinutes(2)) is { } problem)
            throw new InvalidOperationException(problem);
    }

    public string? NodeOfSilo(string identity) =>
        identity.Split(':') is [_, var port, ..] && int.TryParse(port, out var p) ? _silos.FirstOrDefault(s => s.SiloPort == p)?.Node : null;

    public IReadOnlyDictionary<long, StepSamples> Samples(string job)
    {
        using var ledger = SampleLedger.Replay(Directory.GetFiles(_ledger, "*.ledger"));
        return ledger.Of(job);
    }

    public TimeSpan CpuTime() =>
        Environment.CpuUsage.TotalTime + _cpuOfKilled + _silos.Aggregate(TimeSpan.Zero, (sum, s) => sum + LocalSilos.CpuTime(s.Pid));

    private SiloProcess Silo(string node) =>
        _silos.FirstOrDefault(s => s.Node == node) ?? throw new ArgumentException($"the twin has no node '{node}'", nameof(node));

    private static async Task WaitUntil(Func<bool> done)
    {
        while (!done())
            await Task.Delay(10);
    }

    /// <summary>Deletes everything the cluster kept in Redis: every key names its service id.</summary>
    private static async Task DeleteKeys(string redis, string serviceId)
    {
        try
        {
            await using var connection = await ConnectionMultiplexer.ConnectAsync(redis);
            foreach (var endpoint in connection.GetEndPoints())
            {
                var keys = new List<RedisKey>();
                await foreach (var key in connection.GetServer(endpoint).KeysAsync(pattern: $"*{serviceId}*"))
                    keys.Add(key);
                if (keys.Count > 0)
                    await connection.GetDatabase().KeyDeleteAsync([.. keys]);
            }
        }
        catch (RedisException)
        {
            // Redis went away after the run: its keys go with it, or stay under an id nothing uses again.
        }
    }

    public async ValueTask DisposeAsync()
    {
        await _client.DisposeAsync();
        // The run is over: silos leave in order (SIGTERM), all at once, those that take too long are killed.
        await Task.WhenAll(_silos.Select(s => LocalSilos.Stop(s.Pid, TimeSpan.FromSeconds(10))));
        await DeleteKeys(_profile.Redis, _profile.ServiceId);
        _clock.Dispose();
        _modelled.Dispose();
    }
}
