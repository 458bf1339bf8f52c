using System.CommandLine;
using System.Globalization;
using FlmCluster.Cli.Sim;
using FlmCluster.Silo.Sim;
using FlmCluster.Training;
using FlmCluster.Training.Config;

namespace FlmCluster.Cli.Commands;

/// <summary>
/// <c>flm sim</c>: a growth schedule on a simulated cluster (<see cref="TwinRun"/>) — silos in this process, or
/// one silo process per server on Redis with <c>--processes</c> — with server losses from a schedule file or a
/// rate, and the report as tables or JSON, a timeline and a projection.
/// </summary>
public static class SimCommand
{
    public static Command Create()
    {
        var servers = new Option<int>("--servers") { Description = "GPU servers the job runs on", DefaultValueFactory = _ => 24 };
        var gpusPerServer = new Option<int>("--gpus-per-server") { Description = "Simulated GPUs per server", DefaultValueFactory = _ => 8 };
        var config = new Option<string>("--config") { Description = "Growth schedule: a preset (flm-101b) or a JSON job config with stages", DefaultValueFactory = _ => "flm-101b" };
        var spares = new Option<int>("--spares") { Description = "Spare servers that take a lost server's ranks", DefaultValueFactory = _ => 0 };
        var failures = new Option<string?>("--failures") { Description = "JSON file of server losses (docs/simulation.md)" };
        var mtbf = new Option<double?>("--mtbf") { Description = "Server losses at random: mean simulated hours between failures of one server" };
        var rate = new Option<double?>("--interruption-rate") { Description = "Server losses at random: interruptions per GPU-hour (Llama 3: 2.19e-5)" };
        var projectionRate = new Option<double>("--projection-rate")
        {
            Description = "Interruptions per GPU-hour for the projection (default Llama 3's)", DefaultValueFactory = _ => ProjectionReport.Llama3RatePerGpuHour,
        };
        var seed = new Option<int>("--seed") { Description = "Seed of the random losses and servers", DefaultValueFactory = _ => 1 };
        var scale = new Option<double>("--scale") { Description = $"Fraction of every stage's steps (at least {TwinRun.MinStageSteps} each)", DefaultValueFactory = _ => 1.0 };
        var json = new Option<bool>("--json") { Description = "Print the report as one JSON object" };
        var timeline = new Option<string?>("--timeline") { Description = "Write an SVG timeline of the run to this file" };
        var storage = new Option<string?>("--storage") { Description = "Folder for the run's checkpoints and silo state (default: the temp folder; deleted after)" };
        var processes = new Option<bool>("--processes") { Description = "One silo process per server (and a control-plane one) on Redis, instead of silos in this process; a loss is kill -9" };
        var redis = new Option<string?>("--redis") { Description = "With --processes: the Redis the silos meet on (default localhost:6379)" };
        var basePort = new Option<int?>("--base-port") { Description = "With --processes: silo ports start here, gateways at +1000, web ports at +2000 (default 17111)" };
        var command = new Command("sim", "Run a growth schedule on simulated GPU servers, with server losses, and report days, ETTR and a projection")
        {
            servers, gpusPerServer, config, spares, failures, mtbf, rate, projectionRate, seed, scale, json, timeline, storage, processes, redis, basePort,
        };
        command.SetAction(async (parse, cancel) =>
        {
            var asProcesses = Processes(parse.GetValue(processes), parse.GetValue(redis), parse.GetValue(basePort), parse.GetValue(servers) + parse.GetValue(spares));
            var plan = Plan(parse.GetValue(failures), parse.GetValue(mtbf), parse.GetValue(rate), parse.GetValue(servers), parse.GetValue(gpusPerServer), parse.GetValue(seed));
            var projection = parse.GetValue(projectionRate);
            if (!double.IsFinite(projection) || projection <= 0)
                throw new FlmUserException($"--projection-rate {Number(projection)} is not a rate; give interruptions per GPU-hour above 0");
            var job = JobConfigLoader.Load(parse.GetValue(config)!, adjust: j => j with { Train = j.Train with { Device = JobValidator.SimDevice } });
            var svg = parse.GetValue(timeline);
            if (svg is not null)
                OutputLocation.RequireCreatableFile(svg, "--timeline");
            var dir = parse.GetValue(storage) ?? Path.GetTempPath();
            OutputLocation.RequireCreatableDirectory(dir, "--storage");
            var run = TwinRun.Prepare(new TwinRunOptions(job, parse.GetValue(servers), parse.GetValue(gpusPerServer), parse.GetValue(spares), plan,
                parse.GetValue(seed), parse.GetValue(scale), Path.GetFullPath(dir), projection,
                parse.GetResult(projectionRate) is { Implicit: false } ? "given with --projection-rate" : ProjectionReport.Llama3Source));

            if (asProcesses is not null)
                await ProcessTwinCluster.RequireRedis(asProcesses.Redis);

            var asJson = parse.GetValue(json);
            var report = await run.RunAsync(line => (asJson ? Console.Error : Console.Out).WriteLine(line), cancel,
                asProcesses is null ? null : spec => ProcessTwinCluster.StartAsync(spec, asProcesses, cancel));
            if (svg is not null && report.Completed)
                await File.WriteAllTextAsync(svg, SvgTimeline.Render(report), cancel);
            if (asJson)
                JsonOutput.Print(report);
            else
            {
                Console.WriteLine();
                report.WriteText(Console.Out);
                if (svg is not null && report.Completed)
                    Console.WriteLine($"timeline: {svg}");
            }
            return report.Completed && report.Samples.Exact ? CliRunner.Ok : CliRunner.Failed;
        });
        return command;
    }

    /// <summary>Where the silo processes go with --processes; null without it (the process options are then refused).</summary>
    private static ProcessTwinOptions? Processes(bool processes, string? redis, int? basePort, int silos)
    {
        if (!processes)
        {
            if (redis is not null || basePort is not null)
                throw new FlmUserException($"{(redis is not null ? "--redis" : "--base-port")} is for silo processes; add --processes, or leave it out");
            return null;
        }
        if (redis is not null && string.IsNullOrWhiteSpace(redis))
            throw new FlmUserException("--redis is empty; give a connection string such as localhost:6379");
        var port = basePort ?? DefaultBasePort;
        // Silo ports are base … base+silos, gateways base+1000 …, web ports base+2000 …: at most 1000 silos, all below 65536.
        if (port is < 1024 or > 65535 - 3000)
            throw new FlmUserException($"--base-port {port} must leave room for silo, gateway and web ports (1024 … {65535 - 3000})");
        if (silos + 1 > 1000)
            throw new FlmUserException($"--servers and --spares make {silos + 1} silo processes with the control node; a local cluster's ports allow 1000");
        return new ProcessTwinOptions(redis ?? "localhost:6379", port);
    }

    private const int DefaultBasePort = 17111; // clear of flm cluster up's 11111 … 13111 and below the ephemeral ports (32768 …)

    /// <summary>At most one source of losses: a schedule file, a per-server MTBF, or a per-GPU rate; none means no losses.</summary>
    private static FailurePlan Plan(string? file, double? mtbf, double? rate, int servers, int gpusPerServer, int seed)
    {
        var given = new[] { (file is not null, "--failures"), (mtbf is not null, "--mtbf"), (rate is not null, "--interruption-rate") }.Where(g => g.Item1).Select(g => g.Item2).ToList();
        if (given.Count > 1)
            throw new FlmUserException($"{string.Join(" and ", given)} both set the server losses; give one of --failures, --mtbf, --interruption-rate");
        if (servers < 1 || gpusPerServer < 1)
            return FailurePlan.None; // TwinRun.Prepare names the problem
        if (file is not null)
            return FailurePlan.Scheduled(FailurePlan.ReadFile(file), $"the losses of {file}");
        if (mtbf is { } hours)
        {
            if (!double.IsFinite(hours) || hours <= 0)
                throw new FlmUserException($"--mtbf {Number(hours)} is not a time between failures; give simulated hours above 0");
            return FailurePlan.Poisson(servers / hours, seed, $"random losses, MTBF {Number(hours)} h per server (seed {seed})");
        }
        if (rate is { } r)
        {
            if (!double.IsFinite(r) || r <= 0)
                throw new FlmUserException($"--interruption-rate {Number(r)} is not a rate; give interruptions per GPU-hour above 0 (Llama 3: 2.19e-5)");
            return FailurePlan.Poisson(r * servers * gpusPerServer, seed, $"random losses at {Number(r)} per GPU-hour (seed {seed})");
        }
        return FailurePlan.None;
    }

    private static string Number(double value) => value.ToString("G", CultureInfo.InvariantCulture);
}
