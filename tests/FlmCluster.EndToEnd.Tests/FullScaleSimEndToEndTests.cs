using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>
/// FLM-101B's last stage at the card's layout — TP 4 × PP 4 × DP 12 on 192 GPUs, global batch 2160 — in 24 silo
/// processes of eight simulated GPUs each, a spare server and a control node on Redis: the real coordinator,
/// scheduler, workers and replicas at the real size. kill -9 of a server that holds ranks: the spare takes them
/// from the in-memory replicas in the same layout, and every sample is trained exactly once.
/// </summary>
[Trait("Category", "EndToEnd")]
[Collection(nameof(RunsAlone))]
public sealed class FullScaleSimEndToEndTests(ITestOutputHelper output) : IDisposable
{
    private const int BasePort = 24511; // 26 silos: 24511…, 25511…, 26511…, clear of the other classes' ranges
    private readonly Flm _flm = new("flm-e2e-192-");

    public void Dispose() => _flm.Dispose();

    /// <summary>Set to 1 to run this test: it takes a whole 2-core machine for 5 minutes, so the default run leaves it out.</summary>
    public const string OptIn = "FLM_TEST_FULL_SCALE";

    [Fact]
    public void The_101B_layout_runs_on_24_silo_processes_and_a_spare_replaces_a_killed_server()
    {
        Assert.SkipUnless(Environment.GetEnvironmentVariable(OptIn) == "1",
            $"26 silo processes: run it alone with {OptIn}=1 dotnet test tests/FlmCluster.EndToEnd.Tests -- --filter-class '*FullScaleSim*'");
        var watch = Stopwatch.StartNew();
        _flm.Up(nodes: 25, gpusPerNode: 8, basePort: BasePort, sim: true, readySeconds: 300);
        output.WriteLine($"25 servers × 8 sim GPUs + control up in {watch.Elapsed.TotalSeconds:0} s");
        const int steps = 24;
        var dir = Path.Combine(_flm.Home, "checkpoints");
        var submit = _flm.Run("submit", "--config", "101b", "--set", "train.device=sim", "--steps", $"{steps}",
            "--set", $"checkpoint.dir={dir}", "--set", "checkpoint.interval=12", "--set", "checkpoint.memory_interval=4");
        Assert.True(submit.ExitCode == 0, submit.Output + submit.Error);
        var jobId = submit.Output.Trim();

        // Once replicas are held, the server of the job's rank 0 dies.
        var victim = _flm.KillRankZerosServerOnceReplicated(jobId, TimeSpan.FromMinutes(8));
        output.WriteLine($"killed {victim}");

        var follow = _flm.Run(TimeSpan.FromMinutes(8), "status", jobId, "--watch");
        output.WriteLine(follow.Error);
        Assert.True(follow.ExitCode == 0, follow.Output + follow.Error);
        Assert.Contains($"{jobId}: completed at step {steps}/{steps}", follow.Output);
        const string layout = "192 GPUs, layout dp=12,tp=4,pp=4,micro=180";
        Assert.Matches($@"replaced: .*: {layout} → {layout}; from the in-memory replicas of step \d+", follow.Error);
        // The event names the dead server, and only it.
        var lost = Regex.Match(follow.Error, @"workers-lost: (.*)").Groups[1].Value;
        Assert.Matches($@"^(worker {victim}/gpu\d on server {victim}|server {victim} \(the job's workers [^)]*\)) is out of reach: ", lost);
        Assert.DoesNotMatch(@"node\d+/", lost.Replace(victim + "/", ""));

        var final = _flm.Run("status", jobId);
        var servers = Regex.Matches(final.Output, @"^  (\w+): rank", RegexOptions.Multiline).Select(m => m.Groups[1].Value).ToList();
        Assert.Equal(24, servers.Count);
        Assert.DoesNotContain(victim, servers);
        using var manifest = JsonDocument.Parse(File.ReadAllText(Path.Combine(dir, $"step-{steps:D8}", "manifest.json")));
        Assert.Equal(steps * 2160L, manifest.RootElement.GetProperty("samples_consumed").GetInt64());
        Assert.Equal(192, Directory.GetFiles(Path.Combine(dir, $"step-{steps:D8}"), "shard-*.sim.json").Length);
        output.WriteLine($"whole test {watch.Elapsed.TotalSeconds:0} s");
    }
}

/// <summary>
/// Tests that load the machine with dozens of processes: they run after the parallel ones, alone, so that neither
/// they nor the others fail for want of CPU.
/// </summary>
[CollectionDefinition(nameof(RunsAlone), DisableParallelization = true)]
public sealed class RunsAlone;
