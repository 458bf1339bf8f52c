using System.CommandLine;
using System.Globalization;
using FlmCluster.Silo.Sim;
using FlmCluster.Training;
using FlmCluster.Training.Config;

namespace FlmCluster.Cli.Commands;

/// <summary>
/// <c>flm sim</c>: a growth schedule on a simulated cluster in this process (<see cref="TwinRun"/>), with server
/// losses from a schedule file or a rate, and the report as tables or JSON, a timeline and a projection.
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
        var processes = new Option<bool>("--processes") { Description = "One silo process per server on Redis (not supported yet)" };
        var command = new Command("sim", "Run a growth schedule on simulated GPU servers in this process, with server losses, and report days, ETTR and a projection")
        {
            servers, gpusPerServer, config, spares, failures, mtbf, rate, projectionRate, seed, scale, json, timeline, storage, processes,
        };
        command.SetAction(async (parse, cancel) =>
        {
            if (parse.GetValue(processes))
                throw new FlmUserException("--processes is not supported yet; run without it (silos in this process)");
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

            var asJson = parse.GetValue(json);
            var report = await run.RunAsync(line => (asJson ? Console.Error : Console.Out).WriteLine(line), cancel);
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
