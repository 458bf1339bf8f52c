using System.Diagnostics;
using System.Globalization;
using System.Text.RegularExpressions;
using FlmCluster.Grains.Abstractions;
using FlmCluster.Grains.Sim;
using FlmCluster.Silo;
using FlmCluster.Training.Config;
using FlmCluster.Training.Growth;
using FlmCluster.Training.Parallel;
using FlmCluster.Training.Sim;
using FlmCluster.Training.Telemetry;

namespace FlmCluster.Bench;

/// <summary>
/// FLM-101B's whole schedule (16B → 51B → 101B, the card's layouts, batches and steps) on a simulated cluster of
/// DGX-A800 servers: real silos in this process, eight simulated GPUs each, the real coordinator, scheduler,
/// checkpoints, replicas and recovery, on the virtual clock. Servers die at seeded moments (one during the first
/// growth transition, one the coordinator's own) and come back repaired a little later; spare servers take their
/// ranks meanwhile. Reports per stage the throughput and days against the card, the growth transitions, every
/// recovery, where the job's time went (ETTR), the sample accounting, and how fast the twin ran. Then the real
/// control-plane cost of a step against GPUs (<see cref="SimScaleBenchmark"/>).
/// </summary>
public static partial class SimScheduleBenchmark
{
    public static async Task<int> Run(BenchArgs args)
    {
        var servers = args.Int("servers", 24);
        var spares = args.Int("spares", 2);
        var failures = args.Int("failures", 5);
        var seed = args.Int("seed", 1);
        var scale = double.Parse(args.Text("scale", "1"), CultureInfo.InvariantCulture);
        var storage = args.Text("storage", Path.GetTempPath());
        var dir = Directory.CreateDirectory(Path.Combine(storage, $"flm-sim-{Guid.NewGuid():N}")).FullName;
        try
        {
            var ok = await Schedule(servers, spares, failures, seed, scale, dir, args.Text("timeline", ""));
            Console.WriteLine();
            if (args.Int("scale-steps", 300) is var steps and > 0)
                await SimScaleBenchmark.Run(new BenchArgs(new() { ["steps"] = steps.ToString(CultureInfo.InvariantCulture), ["gpus"] = args.Text("gpus", "8,32,64,192"), ["storage"] = storage }));
            return ok ? 0 : 1;
        }
        finally
        {
            Directory.Delete(dir, recursive: true);
        }
    }

    private static async Task<bool> Schedule(int servers, int spares, int failures, int seed, double scale, string dir, string timeline)
    {
        var sim = new FlmSimulation(SimCluster.Default, new VirtualClock(), new SampleLedger());
        var preset = Presets.Get("flm-101b");
        var job = JobValidator.Validate(preset with
        {
            Train = preset.Train with { Device = JobValidator.SimDevice },
            Stages = [.. preset.Stages.Select(s => s with { Steps = Math.Max(200, (long)Math.Round(s.Steps * scale)) })],
            Checkpoint = new CheckpointConfig { Dir = Path.Combine(dir, "checkpoints"), Interval = 500, MemoryInterval = 50 },
        });
        var stages = GrowthSchedule.Resolve(job);
        var stageEnds = stages.Select((_, i) => stages.Take(i + 1).Sum(s => s.Job.Train.Steps)).ToList();
        var total = stageEnds[^1];
        Console.WriteLine($"FLM-101B on {servers} simulated DGX-A800 servers + {spares} spare (8 GPUs each), silos in this process on {Environment.ProcessorCount} cores; " +
            $"steps {string.Join(" + ", stages.Select(s => $"{s.Job.Train.Steps} ({s.Name})"))}{(scale != 1 ? $" (× {scale} of the card's)" : "")}; " +
            $"checkpoint every 500 steps, in-memory replicas every 50; {failures} server losses (seed {seed})");

        // Moments of the losses: one during the 16B → 51B transition, one of the coordinator's server, the rest at seeded steps.
        var random = new Random(seed);
        var plan = new List<(long Step, string Kind)>();
        if (failures > 0)
            plan.Add((stageEnds[0], "growth"));
        if (failures > 1)
            plan.Add((random.NextInt64(stageEnds[1], total - 100), "coordinator"));
        while (plan.Count < failures)
            plan.Add((random.NextInt64(50, total - 100), "worker"));
        plan = [.. plan.OrderBy(p => p.Step)];

        var real = Stopwatch.StartNew();
        var cpu = Environment.CpuUsage.TotalTime;
        await using var cluster = await LocalCluster.StartAsync(servers + spares, 8, storageDir: Path.Combine(dir, "state"), observe: false, simulation: sim);
        var grains = cluster.Grains(cluster.Nodes[0]);
        var id = await grains.GetGrain<IClusterSchedulerGrain>("cluster").Submit(new JobSubmission(JobConfigLoader.ToJson(job)));
        var losses = new List<(string Node, string Kind, long Step, DateTimeOffset At)>();
        var down = new List<(string Node, TimeSpan Since)>();
        var stepMs = stages.ToDictionary(s => s.Name, _ => new List<double>());
        var seen = -1L;
        JobStatus status;
        while (true)
        {
            // Any silo that is up answers for the cluster.
            var up = cluster.Grains(cluster.Nodes.First(cluster.IsRunning));
            try
            {
                status = await up.GetGrain<IJobCoordinatorGrain>(id).GetStatus();
            }
            catch (Exception ex) when (ex is OrleansException or TimeoutException)
            {
                continue; // the coordinator is moving
            }
            foreach (var p in status.Recent.Where(p => p.Step > seen))
                stepMs[p.Stage].Add(p.StepMs);
            seen = status.Recent.Count > 0 ? status.Recent[^1].Step : seen;
            if (status.State.IsFinal())
                break;
            // A server comes back repaired after 10 s of real time.
            foreach (var (node, since) in down.Where(d => real.Elapsed - d.Since > TimeSpan.FromSeconds(10)).ToList())
            {
                await cluster.StartAsync(node);
                down.Remove((node, since));
            }
            if (plan.Count > 0 && status.Step >= plan[0].Step && (plan[0].Kind != "growth" || status.State == JobPhase.Starting))
            {
                var (step, kind) = plan[0];
                plan.RemoveAt(0);
                var node = kind == "coordinator" && status.Coordinator is { } silo
                    ? cluster.NodeOfSilo(silo)
                    : status.Workers[random.Next(status.Workers.Count)].Split('/')[0];
                if (node is not null && cluster.IsRunning(node) && status.Workers.Count > 0)
                {
                    await cluster.KillAsync(node);
                    down.Add((node, real.Elapsed));
                    losses.Add((node, kind, status.Step, sim.Clock.GetUtcNow()));
                }
            }
            await Task.Delay(20);
        }
        real.Stop();
        var cpuSeconds = (Environment.CpuUsage.TotalTime - cpu).TotalSeconds;
        var events = (await cluster.Grains(cluster.Nodes.First(cluster.IsRunning)).GetGrain<IJobCoordinatorGrain>(id).GetHistory(long.MaxValue, 0, JobHistory.MaxPage)).Events;
        Console.WriteLine();
        Console.WriteLine($"job {status.State} in {real.Elapsed.TotalMinutes:0.0} real minutes ({cpuSeconds / 60:0.0} CPU minutes)" + (status.Error is { } e ? $": {e}" : ""));
        if (status.State != JobPhase.Completed)
        {
            foreach (var ev in events.TakeLast(30))
                Console.WriteLine($"  {ev.At:O} {ev.Kind}: {ev.Message}");
            return false;
        }

        // Stages: from their first step to the start of the growth out of them; growth transitions between.
        foreach (var ev in events.Where(ev => ev.Kind is "growth" or "started" or "completed"))
            Console.WriteLine($"  {(ev.At - status.SubmittedAt).TotalDays:0.0000} d {ev.Kind}: {ev.Message}");
        // The last report of each transition (one repeated after a failure reports again).
        var growth = stages.Skip(1).Select(to => events.Last(ev => ev.Kind == "growth" && ev.Message.Contains($" → {to.Name} at step", StringComparison.Ordinal)))
            .Select(ev => (End: ev.At, Seconds: GrowthSeconds(ev.Message))).ToList();
        var started = events.First(ev => ev.Kind == "started").At;
        var completed = events.Last(ev => ev.Kind == "completed").At;
        Console.WriteLine();
        Console.WriteLine("| stage | layout | steps | modelled step s | median step s (twin) | TFLOP/s per GPU (twin) | card | MFU | days (twin) | card days | days at the card's steps |");
        Console.WriteLine("|---|---|---|---|---|---|---|---|---|---|---|");
        var totalDays = 0.0;
        for (var i = 0; i < stages.Count; i++)
        {
            var s = stages[i];
            var layout = ParallelLayout.FromConfig(s.Job.Layout);
            var cost = StepCostModel.For(s.Job.Model, layout, s.Job.Train.GlobalBatch, "bf16", sim.Cluster);
            var median = Stats.Median(stepMs[s.Name]) / 1000;
            var tflops = ModelFlops.TrainingStep(s.Job.Model, s.Job.Train.GlobalBatch) / median / layout.WorldSize / 1e12;
            var from = i == 0 ? started : growth[i - 1].End;
            var to = i == stages.Count - 1 ? completed : growth[i].End.AddSeconds(-growth[i].Seconds);
            var days = (to - from).TotalDays;
            var card = PublishedSchedule.Flm101b[i];
            var atCard = days * card.Tokens / ((double)s.Job.Train.Steps * s.Job.Train.GlobalBatch * s.Job.Model.SeqLen);
            totalDays += atCard;
            Console.WriteLine($"| {s.Name} | {layout} | {s.Job.Train.Steps} | {cost.Seconds:0.000} | {median:0.000} | {tflops:0.0} | {card.TflopsPerGpu} | {tflops * 1e12 / sim.Cluster.Hardware.PeakFlops:P1} | " +
                $"{days:0.00} | {card.Days} | {atCard:0.00} |");
        }
        Console.WriteLine();
        foreach (var (g, i) in growth.Select((g, i) => (g, i)))
            Console.WriteLine($"growth {stages[i].Name} → {stages[i + 1].Name}: {g.Seconds / 60:0.0} minutes (modelled checkpoint, load and grow, and the losses before and after)");
        var t = status.Time!;
        var wall = (completed - status.SubmittedAt).TotalSeconds;
        Console.WriteLine();
        Console.WriteLine($"time account (simulated hours): productive {t.Productive / 3600:0.00}, redone {t.Redone / 3600:0.00}, checkpoint stall {t.CheckpointStall / 3600:0.00}, " +
            $"growth {t.Growth / 3600:0.00}, startup {t.Startup / 3600:0.00}, overhead {t.Overhead / 3600:0.00}, recovery {t.Recovery.Total / 3600:0.00} " +
            $"(detect {t.Recovery.Detect / 3600:0.00}, decide {t.Recovery.Decide / 3600:0.00}, allocate {t.Recovery.Allocate / 3600:0.00}, rebuild {t.Recovery.Rebuild / 3600:0.00}, " +
            $"restore {t.Recovery.Restore / 3600:0.00}, first step {t.Recovery.FirstStep / 3600:0.00}, waiting {t.Recovery.Waiting / 3600:0.00}); queued {t.Queued / 3600:0.00}");
        Console.WriteLine($"accounted {t.Accounted / 86400:0.000} days of {wall / 86400:0.000} from submission to completion (difference {t.Accounted - wall:0.000} s); ETTR {t.Ettr:P2}");
        Console.WriteLine($"whole schedule {(completed - started).TotalDays:0.00} simulated days{(scale != 1 ? $", {totalDays:0.00} at the card's steps" : "")}; card: {PublishedSchedule.StageDays:0.00} days of stages, " +
            $"< {PublishedSchedule.TotalDaysBound} in all; twin speed {(completed - started).TotalDays / real.Elapsed.TotalMinutes:0.00} simulated days per real minute");
        Console.WriteLine();
        Console.WriteLine($"server losses: {losses.Count} ({status.Time!.Recovery.Count} recoveries)");
        foreach (var (node, kind, step, at) in losses)
            Console.WriteLine($"  {node} ({kind}) at step {step}, {(at - status.SubmittedAt).TotalDays:0.000} days in");
        foreach (var ev in events.Where(ev => ev.Kind is "workers-lost" or "replaced" or "recovered" or "growing-back" or "restoring"))
            Console.WriteLine($"  {(ev.At - status.SubmittedAt).TotalDays:0.000} d {ev.Kind}: {ev.Message}");
        if (timeline.Length > 0)
        {
            File.WriteAllText(timeline, Timeline(status.SubmittedAt, completed, stages.Select(s => s.Name).ToList(), started, growth, events));
            Console.WriteLine($"timeline: {timeline}");
        }
        var problems = SampleProblems(sim.Samples!.Of(id), stages);
        Console.WriteLine(problems.Count == 0 ? $"samples: every one of the {total} steps trained its batch once, the batches back to back" : $"samples: {string.Join("; ", problems.Take(5))}");
        return problems.Count == 0;
    }

    /// <summary>The steps kept trained contiguous batches of their stage's size, each split over all its replicas.</summary>
    private static List<string> SampleProblems(IReadOnlyDictionary<long, StepSamples> ledger, IReadOnlyList<ResolvedStage> stages)
    {
        var problems = new List<string>();
        var step = 0L;
        var next = 0L;
        foreach (var stage in stages)
            for (var i = 0L; i < stage.Job.Train.Steps; i++, step++)
            {
                if (!ledger.TryGetValue(step, out var s))
                {
                    problems.Add($"step {step} is missing");
                    continue;
                }
                if (s.Replicas != s.DataParallel || s.First != next || s.Samples != stage.Job.Train.GlobalBatch || s.End - s.First != s.Samples)
                    problems.Add($"step {step}: {s}");
                next = s.End;
            }
        if (ledger.Count != step)
            problems.Add($"{ledger.Count} steps recorded, {step} expected");
        return problems;
    }

    /// <summary>
    /// The run as an SVG on a time axis in days: each stage's span, the growth transitions between them, every
    /// recovery from the loss of workers to its first committed step, and each loss as a red line.
    /// </summary>
    private static string Timeline(DateTime submitted, DateTime completed, IReadOnlyList<string> stageNames, DateTime started,
        IReadOnlyList<(DateTime End, double Seconds)> growth, IReadOnlyList<JobEvent> events)
    {
        const double width = 1200, left = 60;
        var days = (completed - submitted).TotalDays;
        string X(DateTime t) => (left + (t - submitted).TotalDays / days * (width - left - 20)).ToString("0.0", CultureInfo.InvariantCulture);
        string W(DateTime a, DateTime b) => Math.Max(1, (b - a).TotalDays / days * (width - left - 20)).ToString("0.0", CultureInfo.InvariantCulture);
        var svg = new System.Text.StringBuilder();
        svg.AppendLine(CultureInfo.InvariantCulture, $"<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"170\" font-family=\"sans-serif\" font-size=\"12\">");
        string[] colours = ["#4e79a7", "#59a14f", "#9c755f"];
        for (var i = 0; i < stageNames.Count; i++)
        {
            var from = i == 0 ? started : growth[i - 1].End;
            var to = i == stageNames.Count - 1 ? completed : growth[i].End.AddSeconds(-growth[i].Seconds);
            svg.AppendLine(CultureInfo.InvariantCulture, $"<rect x=\"{X(from)}\" y=\"20\" width=\"{W(from, to)}\" height=\"40\" fill=\"{colours[i % colours.Length]}\"/>");
            svg.AppendLine(CultureInfo.InvariantCulture, $"<text x=\"{X(from)}\" y=\"15\">{stageNames[i]}: {(to - from).TotalDays:0.00} d</text>");
            if (i < growth.Count)
                svg.AppendLine(CultureInfo.InvariantCulture, $"<rect x=\"{X(to)}\" y=\"20\" width=\"{W(to, growth[i].End)}\" height=\"40\" fill=\"#f28e2b\"><title>growth {growth[i].Seconds / 60:0.0} min</title></rect>");
        }
        DateTime? lost = null;
        foreach (var ev in events)
        {
            if (ev.Kind == "workers-lost")
            {
                lost ??= ev.At;
                svg.AppendLine(CultureInfo.InvariantCulture, $"<line x1=\"{X(ev.At)}\" x2=\"{X(ev.At)}\" y1=\"65\" y2=\"110\" stroke=\"#e15759\" stroke-width=\"2\"><title>{System.Security.SecurityElement.Escape(ev.Message)}</title></line>");
            }
            else if (ev.Kind == "recovered" && lost is { } since)
            {
                svg.AppendLine(CultureInfo.InvariantCulture, $"<rect x=\"{X(since)}\" y=\"80\" width=\"{W(since, ev.At)}\" height=\"20\" fill=\"#e15759\" opacity=\"0.6\"><title>{System.Security.SecurityElement.Escape(ev.Message)}</title></rect>");
                lost = null;
            }
        }
        for (var d = 0; d <= (int)days; d++)
        {
            var x = X(submitted.AddDays(d));
            svg.AppendLine(CultureInfo.InvariantCulture, $"<line x1=\"{x}\" x2=\"{x}\" y1=\"120\" y2=\"125\" stroke=\"black\"/><text x=\"{x}\" y=\"140\" text-anchor=\"middle\">{d}</text>");
        }
        svg.AppendLine(CultureInfo.InvariantCulture, $"<text x=\"{left}\" y=\"160\">simulated days; stages (blue, green, brown), growth (orange), server losses (red lines) and recoveries until their first step (red)</text>");
        svg.AppendLine("</svg>");
        return svg.ToString();
    }

    private static double GrowthSeconds(string message) =>
        GrowthTook().Match(message) is { Success: true } m ? double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture) : 0;

    [GeneratedRegex(@"; ([0-9.]+) s$")]
    private static partial Regex GrowthTook();
}
