using System.CommandLine;
using System.Diagnostics;
using FlmCluster.Client;
using FlmCluster.Training;
using Spectre.Console;

namespace FlmCluster.Cli.Commands;

/// <summary><c>flm cluster up|down</c> (a local multi-process cluster) and <c>flm nodes</c>.</summary>
public static class ClusterCommands
{
    public static Command Cluster()
    {
        var nodes = new Option<int>("--nodes") { Description = "GPU servers (silo processes) to start", DefaultValueFactory = _ => 2 };
        var gpus = new Option<int>("--gpus-per-node") { Description = "Devices per server (CPU devices here)", DefaultValueFactory = _ => 2 };
        var control = new Option<bool>("--control-node") { Description = "Also start a silo without devices for coordinators and the scheduler (--control-nodes 1)" };
        var controls = new Option<int>("--control-nodes") { Description = "Silos without devices to start for coordinators and the scheduler", DefaultValueFactory = _ => 0 };
        var redis = new Option<string?>("--redis") { Description = "Redis connection string (e.g. localhost:6379): Redis membership, storage and reminders" };
        var basePort = new Option<int>("--base-port") { Description = "Silo ports start here, gateway ports at base+1000, web ports (dashboards, /metrics) at base+2000", DefaultValueFactory = _ => 11111 };
        var dir = new Option<string?>("--dir") { Description = "Folder for logs, storage and the cluster profile (default: next to the profile)" };
        var timeout = new Option<int>("--timeout") { Description = "Seconds to wait for the silos to become active", DefaultValueFactory = _ => 120 };
        var secure = new Option<bool>("--secure") { Description = "Secure mode: create a certificate authority, silo and client certificates, tokens and a cluster key in the cluster folder (credentials/); TLS and client authentication" };
        var sim = new Option<bool>("--sim") { Description = "Simulated GPUs (sim devices, docs/simulation.md): jobs with train.device=sim run on one virtual clock the silos share" };
        var up = new Command("up", "Start a local cluster of silo processes and wait until it is ready") { nodes, gpus, control, controls, redis, basePort, dir, timeout, secure, sim };
        up.SetAction(parse =>
        {
            if (parse.GetValue(controls) < 0)
                throw new FlmUserException($"--control-nodes must not be negative (got {parse.GetValue(controls)})");
            return Up(parse.GetValue(nodes), parse.GetValue(gpus), Math.Max(parse.GetValue(controls), parse.GetValue(control) ? 1 : 0), parse.GetValue(redis),
                parse.GetValue(basePort), parse.GetValue(dir), TimeSpan.FromSeconds(parse.GetValue(timeout)), parse.GetValue(secure), parse.GetValue(sim));
        });
        var down = new Command("down", "Stop the local cluster started by 'flm cluster up'");
        down.SetAction(_ => Down());
        var node = new Argument<string>("node") { Description = "The node to start again (e.g. node1), as 'flm cluster up' named it" };
        var restartTimeout = new Option<int>("--timeout") { Description = "Seconds to wait for the silo to become active", DefaultValueFactory = _ => 120 };
        var restart = new Command("restart", "Start a node of the local cluster again (after it was stopped or killed), with its settings") { node, restartTimeout };
        restart.SetAction(parse => Restart(parse.GetValue(node)!, TimeSpan.FromSeconds(parse.GetValue(restartTimeout))));
        return new Command("cluster", "Local cluster of silo processes") { up, down, restart, Credentials() };
    }

    /// <summary><c>flm cluster credentials</c>: the files of a secure cluster, for silos started by other means (compose, Kubernetes, Slurm).</summary>
    private static Command Credentials()
    {
        var dir = new Option<string>("--dir") { Description = "Folder to create the files in (it must not hold an authority yet)", Required = true };
        var hosts = new Option<string[]>("--host") { Description = "A name or address the silos are reached at (repeat; localhost and 127.0.0.1 always)", AllowMultipleArgumentsPerToken = true };
        var days = new Option<int>("--days") { Description = "Days the silo and client certificates are valid", DefaultValueFactory = _ => 365 };
        var command = new Command("credentials", "Create a certificate authority, silo and client certificates, operator and viewer tokens and a cluster key") { dir, hosts, days };
        command.SetAction(parse =>
        {
            var folder = parse.GetValue(dir)!;
            if (parse.GetValue(days) is < 1 or > 3650)
                throw new FlmUserException($"--days {parse.GetValue(days)} must be 1 … 3650");
            OutputLocation.RequireCreatableDirectory(folder, "--dir");
            if (File.Exists(new CredentialFiles(Path.GetFullPath(folder)).Authority))
                throw new FlmUserException($"--dir {folder} holds a cluster's credentials already (ca.pem); give an empty folder");
            var files = CredentialFiles.Create(folder, parse.GetValue(hosts) ?? [], TimeSpan.FromDays(parse.GetValue(days)));
            Console.WriteLine($"credentials in {files.Folder}:");
            Console.WriteLine($"  authority {files.Authority} (its key {files.AuthorityKey}: keep it off the servers)");
            Console.WriteLine($"  silos     {files.SiloCertificate}, {files.SiloKey}, cluster key {files.ClusterKey}");
            Console.WriteLine($"  clients   operator: {files.OperatorToken} or {files.OperatorCertificate} + {files.OperatorKey}; viewer: {files.ViewerToken} or {files.ViewerCertificate} + {files.ViewerKey}");
            Console.WriteLine($"silo switches: {string.Join(' ', files.SiloArguments)}");
            return CliRunner.Ok;
        });
        return command;
    }

    public static Command Nodes()
    {
        var json = new Option<bool>("--json") { Description = "Print JSON (stable field names, see docs/operations.md) instead of a table" };
        var command = new Command("nodes", "Servers, their GPUs and what each GPU is doing") { json };
        command.SetAction(async parse =>
        {
            await using var client = await ClusterAccess.Connect();
            var inventory = await client.Inventory();
            var workers = (await client.Workers(inventory)).ToDictionary(w => w.Worker);
            if (parse.GetValue(json))
            {
                JsonOutput.Print(new JsonOutput.NodesJson(inventory.Nodes.Select(n => new JsonOutput.NodeJson(n.Node, n.Address, n.Status, n.Gpus.Select(g =>
                {
                    var live = workers.GetValueOrDefault(g.Worker);
                    return new JsonOutput.GpuJson(g.Worker[(g.Worker.IndexOf('/') + 1)..], g.Worker, g.Device, g.JobId, g.Rank >= 0 ? g.Rank : null,
                        live is null ? null : Text.Of(live.State), live?.Detail);
                }).ToList())).ToList(), inventory.TotalGpus, inventory.FreeGpus, inventory.Queue));
                return CliRunner.Ok;
            }
            var table = new Table().Border(TableBorder.Rounded);
            foreach (var column in new[] { "node", "silo", "status", "gpu", "device", "job", "rank", "worker" })
                table.AddColumn(column);
            foreach (var node in inventory.Nodes)
            {
                if (node.Gpus.Count == 0)
                    table.AddRow(node.Node, node.Address, node.Status, "-", "-", "", "", "control plane");
                foreach (var gpu in node.Gpus)
                {
                    var live = workers.TryGetValue(gpu.Worker, out var w) ? $"{Text.Of(w.State)}{(w.Detail is null ? "" : $" ({w.Detail})")}" : "";
                    table.AddRow(node.Node, node.Address, node.Status, gpu.Worker[(gpu.Worker.IndexOf('/') + 1)..], gpu.Device, gpu.JobId ?? "", gpu.Rank >= 0 ? $"{gpu.Rank}" : "", live);
                }
            }
            AnsiConsole.Write(table);
            Console.WriteLine($"{inventory.FreeGpus} of {inventory.TotalGpus} GPUs free; {inventory.Queue.Count} job(s) queued");
            return CliRunner.Ok;
        });
        return command;
    }

    private const int MaxLocalSilos = 1000;

    private const int MaxDevicesPerNode = 1024;

    private static async Task<int> Up(int nodes, int gpus, int controls, string? redis, int basePort, string? dir, TimeSpan timeout, bool secure, bool sim)
    {
        if (nodes < 1 || gpus < 1)
            throw new FlmUserException("--nodes and --gpus-per-node must be at least 1");
        // Silo ports are base … base+silos−1 and gateways base+1000 …: more than 1000 silos would collide.
        var silos = (long)nodes + controls;
        if (silos > MaxLocalSilos)
            throw new FlmUserException($"--nodes {nodes} is more silo processes than a local cluster's ports allow ({MaxLocalSilos}{(controls > 0 ? " with the control nodes" : "")})");
        if (gpus > MaxDevicesPerNode)
            throw new FlmUserException($"--gpus-per-node {gpus} is more than {MaxDevicesPerNode}");
        if (basePort is < 1024 or > 65535 - 3000)
            throw new FlmUserException($"--base-port {basePort} must leave room for silo, gateway and web ports (1024 … {65535 - 3000})");
        if (timeout <= TimeSpan.Zero)
            throw new FlmUserException($"--timeout must be positive (got {timeout.TotalSeconds:0})");
        if (dir is not null)
            OutputLocation.RequireCreatableDirectory(dir, "--dir");
        if (redis is not null && string.IsNullOrWhiteSpace(redis))
            throw new FlmUserException("--redis is empty; give a connection string such as localhost:6379");
        var profilePath = ClusterProfile.DefaultPath;
        OutputLocation.RequireCreatableFile(profilePath, "the cluster profile");
        if (File.Exists(profilePath) && ClusterProfile.Load(profilePath).Silos.Any(s => LocalSilos.IsAlive(s.Pid)))
            throw new FlmUserException($"a cluster is already up (profile {profilePath}); run 'flm cluster down' first");
        var home = Path.GetFullPath(dir ?? Path.Combine(Path.GetDirectoryName(profilePath)!, "cluster"));
        Directory.CreateDirectory(Path.Combine(home, "logs"));
        // A cluster folder that holds credentials keeps them: clients given them before still work.
        var credentials = !secure ? null
            : File.Exists(new CredentialFiles(Path.Combine(home, "credentials")).Authority) ? new CredentialFiles(Path.Combine(home, "credentials"))
            : CredentialFiles.Create(Path.Combine(home, "credentials"), [], TimeSpan.FromDays(365));
        var specs = Enumerable.Range(0, nodes).Select(i => ($"node{i}", $"{(sim ? "sim" : "cpu")}:{gpus}")).ToList();
        specs.InsertRange(0, Enumerable.Range(0, controls).Select(k => (k == 0 ? "control" : $"control{k}", "cpu:0")));
        if (sim)
            File.Delete(Path.Combine(home, "sim-clock")); // a new cluster's clock starts at real time
        var clusterId = $"flm-{Guid.NewGuid():N}"[..12];
        var started = new List<SiloProcess>();
        for (var i = 0; i < specs.Count; i++)
        {
            var (node, devices) = specs[i];
            var log = Path.Combine(home, "logs", $"{node}.log");
            var args = LocalSilos.Arguments(node, devices, i, basePort, clusterId, home);
            if (credentials is not null)
                args.AddRange(credentials.SiloArguments);
            if (redis is not null)
                args.AddRange(["--clustering", "redis", "--redis", redis]);
            if (sim)
                args.AddRange(["--sim-clock", Path.Combine(home, "sim-clock")]);
            started.Add(new SiloProcess(node, LocalSilos.Start(args, log), basePort + i, LocalSilos.GatewayPort(basePort, i), log, args, LocalSilos.WebPort(basePort, i)));
        }
        var profile = new ClusterProfile
        {
            Clustering = redis is null ? "localhost" : "redis",
            Redis = redis ?? "",
            GatewayPorts = started.Select(s => s.GatewayPort).ToList(),
            ClusterId = clusterId,
            Silos = started,
            TlsCa = credentials?.Authority ?? "",
            TokenFile = credentials?.OperatorToken ?? "",
        };
        profile.Save(profilePath);
        var watch = Stopwatch.StartNew();
        foreach (var s in started)
        {
            if (await LocalSilos.WaitReady(profile, s, watch, timeout) is { } problem)
            {
                StopAll(started);
                File.Delete(profilePath);
                throw new FlmUserException(problem);
            }
        }
        // Ready when the scheduler sees every GPU server.
        await using (var client = await FlmClusterClient.ConnectAsync(profile, TimeSpan.FromSeconds(30)))
        {
            while ((await client.Inventory()).Nodes.Count(n => n.Status == "active" && n.Gpus.Count > 0) < nodes)
            {
                if (watch.Elapsed > timeout)
                    throw new FlmUserException("the silos started but the scheduler does not see all servers; see the logs in " + Path.Combine(home, "logs"));
                await Task.Delay(200);
            }
        }
        Console.WriteLine($"cluster {clusterId} up in {watch.Elapsed.TotalSeconds:0.0} s: {nodes} server(s) × {gpus} GPU(s){(controls == 1 ? " + control node" : controls > 1 ? $" + {controls} control nodes" : "")}, {profile.Describe()}");
        var web = credentials is null ? "http" : "https";
        foreach (var s in started)
            Console.WriteLine($"  {s.Node}: pid {s.Pid}, silo port {s.SiloPort}, gateway {s.GatewayPort}, web {web}://127.0.0.1:{s.HttpPort}/, log {s.Log}");
        Console.WriteLine($"dashboard: {web}://127.0.0.1:{started[0].HttpPort}/ (every silo serves it; the Orleans dashboard at /orleans, Prometheus metrics at /metrics)");
        if (credentials is not null)
        {
            Console.WriteLine($"secure: TLS with the authority {credentials.Authority}; this profile uses the operator token {credentials.OperatorToken} (viewer: FLM_TOKEN_FILE={credentials.ViewerToken})");
            Console.WriteLine($"  the web port needs a token too: sign in to the dashboard with the contents of {credentials.ViewerToken}; scripts and Prometheus send 'Authorization: Bearer TOKEN'");
        }
        Console.WriteLine($"profile {profilePath}; stop with 'flm cluster down'");
        return CliRunner.Ok;
    }

    /// <summary>Starts a node's silo again with the arguments it was first started with; waits until it is active.</summary>
    private static async Task<int> Restart(string node, TimeSpan timeout)
    {
        if (timeout <= TimeSpan.Zero)
            throw new FlmUserException($"--timeout must be positive (got {timeout.TotalSeconds:0})");
        var profilePath = ClusterProfile.DefaultPath;
        if (!File.Exists(profilePath))
            throw new FlmUserException($"no local cluster is up ({profilePath} does not exist); start one with 'flm cluster up'");
        var profile = ClusterProfile.Load(profilePath);
        var silo = profile.Silos.FirstOrDefault(s => s.Node == node)
            ?? throw new FlmUserException($"the local cluster has no node '{node}'; its nodes are {string.Join(", ", profile.Silos.Select(s => s.Node))}");
        if (LocalSilos.IsAlive(silo.Pid))
            throw new FlmUserException($"node {node} is running (pid {silo.Pid}); stop it first");
        if (silo.Args is not { Count: > 0 } args || silo.HttpPort == 0)
            throw new FlmUserException($"the profile does not say how node {node} was started; start the cluster again with 'flm cluster up'");
        var restarted = silo with { Pid = LocalSilos.Start(args, silo.Log, append: true) };
        profile = profile with { Silos = [.. profile.Silos.Select(s => s.Node == node ? restarted : s)] };
        profile.Save(profilePath);
        var watch = Stopwatch.StartNew();
        if (await LocalSilos.WaitReady(profile, restarted, watch, timeout) is { } problem)
            throw new FlmUserException(problem);
        Console.WriteLine($"{node}: pid {restarted.Pid}, active in {watch.Elapsed.TotalSeconds:0.0} s");
        return CliRunner.Ok;
    }

    private static async Task<int> Down()
    {
        var profilePath = ClusterProfile.DefaultPath;
        if (!File.Exists(profilePath))
            throw new FlmUserException($"no local cluster is up ({profilePath} does not exist)");
        var profile = ClusterProfile.Load(profilePath);
        // Secondaries first, the primary (membership table of development clustering) last.
        foreach (var s in profile.Silos.Reverse())
            await LocalSilos.Stop(s.Pid, TimeSpan.FromSeconds(30));
        File.Delete(profilePath);
        Console.WriteLine($"stopped {profile.Silos.Count} silo(s)");
        return CliRunner.Ok;
    }

    private static void StopAll(IEnumerable<SiloProcess> silos)
    {
        foreach (var s in silos)
            LocalSilos.KillNow(s.Pid);
    }
}
