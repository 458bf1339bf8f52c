using System.Diagnostics;
using System.Text.Json;
using System.Text.Json.Nodes;
using System.Text.RegularExpressions;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>
/// FLM-101B at the real size in 24 silo processes of eight simulated GPUs each, a spare server and a control node
/// on Redis: the real coordinator, scheduler, workers and replicas. One test starts them with 'flm cluster up
/// --sim' and runs the last stage at the card's layout (TP 4 × PP 4 × DP 12, global batch 2160): kill -9 of a
/// server that holds ranks, the spare takes them from the in-memory replicas in the same layout, and every sample
/// is trained exactly once. The other runs the whole growth schedule with 'flm sim --processes'.
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
            "--set", $"checkpoint.dir={dir}", "--set", $"checkpoint.interval={steps}", "--set", "checkpoint.memory_interval=4");
        Assert.True(submit.ExitCode == 0, submit.Output + submit.Error);
        var jobId = submit.Output.Trim();

        // Once replicas are held, the server of the job's rank 0 dies. The only disk checkpoint is the last step's, so
        // wherever the kill lands the newest recovery point is the peers' replicas.
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

    /// <summary>
    /// <c>flm sim --processes</c> at the real size: FLM-101B's three stages (100 steps each, at the card's layouts and
    /// batches) on 24 silo processes of eight simulated GPUs, a spare and a control-plane silo on Redis, with three
    /// kill -9s — a server in the 16B stage, one during the growth into 101B, the coordinator's silo in the 101B stage.
    /// </summary>
    [Fact]
    public void Flm_sim_with_processes_runs_the_whole_schedule_on_26_silo_processes_through_three_kills()
    {
        Assert.SkipUnless(Environment.GetEnvironmentVariable(OptIn) == "1",
            $"26 silo processes: run it alone with {OptIn}=1 dotnet test tests/FlmCluster.EndToEnd.Tests -- --filter-class '*FullScaleSim*'");
        File.WriteAllText(Path.Combine(_flm.Home, "losses.json"), """
            { "losses": [
                { "at_step": 60, "server": "random" },
                { "at_growth": "101b", "server": "random" },
                { "at_step": 250, "server": "coordinator", "repair_hours": 1 }
            ] }
            """);
        var state = Directory.CreateDirectory(Path.Combine(_flm.Home, "state")).FullName;
        var r = _flm.Run(TimeSpan.FromMinutes(20), "sim", "--processes", "--redis", _flm.Redis.ConnectionString, "--base-port", $"{BasePort}",
            "--servers", "24", "--spares", "1", "--config", "flm-101b", "--scale", "0.001", "--failures", Path.Combine(_flm.Home, "losses.json"),
            "--json", "--storage", state);
        output.WriteLine(r.Error);
        Assert.True(r.ExitCode == 0, r.Error);
        Assert.Contains("26 silos up in", r.Error);
        var json = JsonNode.Parse(r.Output)!.AsObject();
        Assert.Equal("completed", (string?)json["state"]);
        Assert.Equal(["dp=96,tp=2,pp=1,micro=24", "dp=24,tp=4,pp=2,micro=96", "dp=12,tp=4,pp=4,micro=180"], json["stages"]!.AsArray().Select(s => (string?)s!["layout"]));

        var failures = json["failures"]!.AsArray();
        Assert.Empty(json["losses_not_injected"]!.AsArray());
        Assert.Equal(["worker", "worker", "coordinator"], failures.Select(f => (string?)f!["kind"]));
        Assert.Equal(["16b", "101b", "101b"], failures.Select(f => (string?)f!["stage"]));
        Assert.InRange((long)failures[1]!["at_step"]!, 200, 205); // in the transition, or just after it should it pass between two looks
        Assert.Equal("control", (string?)failures[2]!["server"]);
        Assert.All(failures, f => Assert.Equal(1, (int)f!["recoveries"]!));

        // Every step trained its batch once across 26 processes and three kill -9s: 100 × 2304 + 100 × 2304 + 100 × 2160.
        var samples = json["samples"]!.AsObject();
        Assert.True((bool)samples["exact"]!, samples.ToJsonString());
        Assert.Equal(676_800, (long)samples["consumed"]!);
        // The silos are gone, their keys too.
        Assert.Empty(Directory.EnumerateFileSystemEntries(state));
        Assert.DoesNotContain(System.Diagnostics.Process.GetProcesses(), p => SiloOf(p.Id, state));
    }

    private static bool SiloOf(int pid, string state)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/cmdline").Contains(state, StringComparison.Ordinal);
        }
        catch (IOException)
        {
            return false;
        }
    }
}

/// <summary>
/// Tests that load the machine with dozens of processes: they run after the parallel ones, alone, so that neither
/// they nor the others fail for want of CPU.
/// </summary>
[CollectionDefinition(nameof(RunsAlone), DisableParallelization = true)]
public sealed class RunsAlone;
