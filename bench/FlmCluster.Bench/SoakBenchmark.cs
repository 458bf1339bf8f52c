using System.Globalization;
using System.Text.RegularExpressions;
using FlmCluster.Tests.Process;
using FlmCluster.Tests.Soak;
using FlmCluster.Training.Config;

namespace FlmCluster.Bench;

/// <summary>
/// The kill -9 soak at length (`soak --kills 20 --seed 7`): recovery time by phase and its distribution, ETTR, and
/// whether the trajectory stayed the uninterrupted one; then what the measured phases become at FLM-101B's size
/// on 24 × 8 A800s, scaling the state-size phases with the 101B stage's per-rank state over InfiniBand.
/// </summary>
public static class SoakBenchmark
{
    public static async Task<int> Run(BenchArgs args)
    {
        var kills = args.Int("kills", 20);
        var seed = args.Int("seed", 7);
        var home = Directory.CreateTempSubdirectory("flm-soak-").FullName;
        using var redis = new RedisServer();
        var environment = new Dictionary<string, string> { ["FLM_PROFILE"] = Path.Combine(home, "cluster.json") };
        FlmResult Flm(string[] a) => FlmProcess.Run(home, environment, TimeSpan.FromMinutes(5), a);
        var soak = new KillSoak(new SoakOptions(home, kills, seed, args.Int("base-port", 32111), [120, 100, 100], Console.WriteLine), Flm);
        SoakResult result;
        try
        {
            result = await soak.Run(redis.ConnectionString);
        }
        finally
        {
            Flm(["cluster", "down"]);
        }
        Report(result);
        Directory.Delete(home, recursive: true);
        return result.Killed.State == Grains.Abstractions.JobPhase.Completed && result.InvalidCheckpoints.Count == 0 ? 0 : 1;
    }

    private static void Report(SoakResult r)
    {
        var t = r.Killed.Time!;
        Console.WriteLine();
        Console.WriteLine($"## kill -9 soak: {r.Kills.Count} kills, job {Text(r.Killed.State)} at step {r.Killed.Step}/{r.Killed.TotalSteps} in {r.Wall.TotalSeconds:0} s");
        Console.WriteLine();
        Console.WriteLine("| kill | moment | node | at step |");
        Console.WriteLine("|---|---|---|---|");
        foreach (var k in r.Kills)
            Console.WriteLine($"| {k.Index} | {k.Moment} | {k.Node} | {k.AtStep} |");
        var phases = r.Killed.Events.Where(e => e.Kind == "recovered").Select(e => Phases(e.Message)).ToList();
        Console.WriteLine();
        Console.WriteLine($"recoveries: {phases.Count}; seconds to the next committed step: median {Quantile(r.RecoverySeconds, 0.5):0.0}, p90 {Quantile(r.RecoverySeconds, 0.9):0.0}, max {r.RecoverySeconds.DefaultIfEmpty(0).Max():0.0}");
        Console.WriteLine();
        Console.WriteLine("| phase | median s | p90 s | max s |");
        Console.WriteLine("|---|---|---|---|");
        foreach (var phase in new[] { "detect", "decide", "allocate", "rebuild", "restore", "first step", "waiting" })
        {
            var values = phases.Select(p => p.GetValueOrDefault(phase)).ToList();
            Console.WriteLine($"| {phase} | {Quantile(values, 0.5):0.00} | {Quantile(values, 0.9):0.00} | {values.DefaultIfEmpty(0).Max():0.00} |");
        }
        Console.WriteLine();
        Console.WriteLine($"time account: ETTR {t.Ettr:0.000}; productive {t.Productive:0.0} s, redone {t.Redone:0.0} s, checkpoint stall {t.CheckpointStall:0.0} s, growth {t.Growth:0.0} s, " +
            $"recovery {t.Recovery.Total:0.0} s, startup {t.Startup:0.0} s, queued {t.Queued:0.0} s, overhead {t.Overhead:0.0} s; accounted {t.Accounted:0.0} s");
        Console.WriteLine($"trajectory: {(r.LayoutChanged ? "layout changed during the run; " : "")}max |Δparam| against the uninterrupted run {r.MaxParameterDifference:E2}; " +
            $"committed steps and samples {(r.Killed.Recent.Select(p => (p.Step, p.FirstSample)).SequenceEqual(r.Uninterrupted.Recent.Select(p => (p.Step, p.FirstSample))) ? "equal" : "DIFFERENT")}; " +
            $"invalid checkpoints {r.InvalidCheckpoints.Count}");
        Project(phases, replicaInterval: 5);
    }

    /// <summary>
    /// Each measured phase at FLM-101B's 101B stage (TP4/PP4/DP12 on 24 × 8 A800): detection and decision as
    /// measured (they do not depend on the model); rebuild and restore scaled from the tiny job's per-rank state to the
    /// 101B rank's, restore at InfiniBand rates; the first step is one 101B step at the card's throughput.
    /// </summary>
    /// <param name="replicaInterval">Steps between in-memory replicas of the 101B job (a restore redoes half of it on average).</param>
    private static void Project(List<Dictionary<string, double>> phases, int replicaInterval)
    {
        var model = Presets.Model101B;
        var perRankParameters = (double)model.ParameterCount / (4 * 4);
        // A replica holds the rank's bf16 parameters (2 bytes) and its 1/12 of the fp32 master weights and Adam moments (12 bytes).
        var replicaBytes = perRankParameters * 2 + perRankParameters * 12 / 12;
        const double infiniBandBytesPerSecond = 25e9; // one 200 Gb/s HDR adapter per GPU pair on a DGX A800, ~25 GB/s usable per GPU
        const double tflopsPerGpu = 165e12; // the card's 101B stage
        var tokensPerStep = 2160.0 * 2048;
        var stepSeconds = 6 * model.ParameterCount * tokensPerStep / (192 * tflopsPerGpu);
        double Median(string phase) => Quantile(phases.Select(p => p.GetValueOrDefault(phase)).ToList(), 0.5);
        var restore = replicaBytes / infiniBandBytesPerSecond;
        Console.WriteLine();
        Console.WriteLine($"projection to FLM-101B's 101B stage on 24 × 8 A800 (per-rank replica {replicaBytes / 1e9:0.0} GB, one step {stepSeconds:0} s):");
        Console.WriteLine();
        Console.WriteLine("| phase | tiny, loopback (median s) | 101B on 24 × 8 (s) | how |");
        Console.WriteLine("|---|---|---|---|");
        Console.WriteLine($"| detect | {Median("detect"):0.00} | {Median("detect"):0.0} | membership (probe 2 s × 3 misses at most), as measured |");
        Console.WriteLine($"| decide | {Median("decide"):0.00} | {Median("decide"):0.0} | survey and policy, as measured |");
        Console.WriteLine($"| allocate | {Median("allocate"):0.00} | {Median("allocate"):0.0} | scheduler call, as measured |");
        Console.WriteLine($"| restore | {Median("restore"):0.00} | {restore:0.0} | {replicaBytes / 1e9:0.0} GB from a peer at {infiniBandBytesPerSecond / 1e9:0} GB/s |");
        Console.WriteLine($"| first step | {Median("first step"):0.00} | {stepSeconds:0} | one step: 6 × {model.ParameterCount / 1e9:0.0}B × {tokensPerStep / 1e6:0.00}M tokens at 165 TFLOP/s × 192 |");
        Console.WriteLine($"| redone (average) | | {stepSeconds * replicaInterval / 2.0:0} | half a replica interval of {replicaInterval} steps |");
    }

    private static Dictionary<string, double> Phases(string message) =>
        Regex.Matches(message, @"(detect|decide|allocate|rebuild|restore|first step|waiting) (\d+\.\d) s")
            .ToDictionary(m => m.Groups[1].Value, m => double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture));

    private static double Quantile(IReadOnlyList<double> values, double q)
    {
        if (values.Count == 0)
            return 0;
        var sorted = values.Order().ToList();
        return sorted[(int)Math.Min(sorted.Count - 1, Math.Ceiling(q * sorted.Count) - 1)];
    }

    private static string Text(Grains.Abstractions.JobPhase phase) => phase.ToString().ToLowerInvariant();
}
