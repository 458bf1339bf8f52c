using System.Globalization;
using FlmCluster.Cli;
using FlmCluster.Silo.Sim;
using FlmCluster.Training.Config;

namespace FlmCluster.Bench;

/// <summary>
/// FLM-101B's whole schedule (16B → 51B → 101B, the card's layouts, batches and steps) on a simulated cluster of
/// DGX-A800 servers through <see cref="TwinRun"/> (the code behind <c>flm sim</c>). Servers die at seeded moments —
/// one during the first growth transition, one the coordinator's own, the rest at random steps — and come back
/// repaired; spare servers take their ranks meanwhile. Then the real control-plane cost of a step against GPUs
/// (<see cref="SimScaleBenchmark"/>).
/// </summary>
public static class SimScheduleBenchmark
{
    public static async Task<int> Run(BenchArgs args)
    {
        var servers = args.Int("servers", 24);
        var seed = args.Int("seed", 1);
        var storage = args.Text("storage", Path.GetTempPath());
        var preset = Presets.Get("flm-101b");
        var options = new TwinRunOptions(preset, servers, 8, args.Int("spares", 2), FailurePlan.None, seed,
            double.Parse(args.Text("scale", "1"), CultureInfo.InvariantCulture), storage);
        var steps = TwinRun.Prepare(options).Stages.Select(s => s.Job.Train.Steps).ToList();
        var failures = args.Int("failures", 5);
        var run = TwinRun.Prepare(options with { Failures = FailurePlan.Scheduled(Losses(failures, steps, seed), $"{failures} server losses (seed {seed})") });
        Console.WriteLine($"FLM-101B on {servers} simulated DGX-A800 servers + {options.Spares} spare (8 GPUs each), silos in this process on {Environment.ProcessorCount} cores; " +
            $"steps {string.Join(" + ", run.Stages.Select(s => $"{s.Job.Train.Steps} ({s.Name})"))}{(options.Scale != 1 ? $" (× {options.Scale} of the card's)" : "")}; " +
            $"checkpoint every 500 steps, in-memory replicas every 50; {failures} server losses (seed {seed})");
        var report = await run.RunAsync(Console.WriteLine);
        Console.WriteLine();
        report.WriteText(Console.Out);
        if (args.Text("timeline", "") is { Length: > 0 } timeline && report.Completed)
        {
            File.WriteAllText(timeline, SvgTimeline.Render(report));
            Console.WriteLine($"timeline: {timeline}");
        }
        Console.WriteLine();
        if (args.Int("scale-steps", 300) is var scaleSteps and > 0)
            await SimScaleBenchmark.Run(new BenchArgs(new() { ["steps"] = scaleSteps.ToString(CultureInfo.InvariantCulture), ["gpus"] = args.Text("gpus", "8,32,64,192"), ["storage"] = storage }));
        return report.Completed && report.Samples.Exact ? 0 : 1;
    }

    /// <summary>One loss during the first growth transition, one of the coordinator's server in the last stages, the rest at seeded steps.</summary>
    private static List<PlannedLoss> Losses(int count, IReadOnlyList<long> stageSteps, int seed)
    {
        var random = new Random(seed);
        var total = stageSteps.Sum();
        var losses = new List<PlannedLoss>();
        if (count > 0)
            losses.Add(new PlannedLoss(null, null, "51b", PlannedLoss.Random, PlannedLoss.DefaultRepairHours));
        if (count > 1)
            losses.Add(new PlannedLoss(random.NextInt64(stageSteps[0] + stageSteps[1], total - 100), null, null, PlannedLoss.Coordinator, PlannedLoss.DefaultRepairHours));
        while (losses.Count < count)
            losses.Add(new PlannedLoss(random.NextInt64(50, total - 100), null, null, PlannedLoss.Random, PlannedLoss.DefaultRepairHours));
        return [.. losses.OrderBy(l => l.AtStep ?? stageSteps[0])];
    }
}
