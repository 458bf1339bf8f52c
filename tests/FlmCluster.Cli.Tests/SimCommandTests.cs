using System.Text.Json.Nodes;
using System.Xml.Linq;
using FlmCluster.Tests.Process;

namespace FlmCluster.Cli.Tests;

/// <summary>
/// <c>flm sim</c> end to end: the real command runs FLM-101B's three stages, shortened, on 24 simulated servers and
/// two spares in its own process, losing five servers as a failures file says; and on silo processes.
/// </summary>
public sealed class SimCommandTests : IDisposable
{
    private readonly string _dir = Directory.CreateTempSubdirectory("flm-sim-cli-").FullName;

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    [Fact]
    [Trait("Category", "EndToEnd")]
    public void A_scaled_schedule_with_five_losses_reports_consistent_json_and_a_timeline()
    {
        // Servers come back after half an hour, so that a spare is free for every loss.
        File.WriteAllText(Path.Combine(_dir, "losses.json"), """
            { "losses": [
                { "at_step": 60, "server": "random", "repair_hours": 0.5 },
                { "at_growth": "51b", "server": "random", "repair_hours": 0.5 },
                { "at_step": 150, "server": "random", "repair_hours": 0.5 },
                { "at_step": 250, "server": "coordinator", "repair_hours": 0.5 },
                { "at_step": 280, "server": "random", "repair_hours": 0.5 }
            ] }
            """);
        Directory.CreateDirectory(Path.Combine(_dir, "state"));
        var r = FlmProcess.Run(_dir, new Dictionary<string, string>(), TimeSpan.FromMinutes(8),
            "sim", "--servers", "24", "--gpus-per-server", "8", "--config", "flm-101b", "--spares", "2", "--scale", "0.001",
            "--failures", "losses.json", "--seed", "3", "--json", "--timeline", "timeline.svg", "--storage", "state");
        Assert.True(r.ExitCode == 0, r.Error);
        var json = JsonNode.Parse(r.Output)!.AsObject();
        Assert.Equal("completed", (string?)json["state"]);

        // The card's three stages, 100 steps each (the shortest a scaled stage gets), every one taking time.
        var stages = json["stages"]!.AsArray();
        Assert.Equal(["16b", "51b", "101b"], stages.Select(s => (string?)s!["name"]));
        Assert.Equal(["dp=96,tp=2,pp=1,micro=24", "dp=24,tp=4,pp=2,micro=96", "dp=12,tp=4,pp=4,micro=180"], stages.Select(s => (string?)s!["layout"]));
        Assert.All(stages, s => Assert.Equal(100, (long)s!["steps"]!));
        Assert.Equal([9.63, 5.37, 6.54], stages.Select(s => (double)s!["card_days"]!));
        Assert.All(stages, s =>
        {
            Assert.True((double)s!["days"]! > 0);
            Assert.True((double)s["step_seconds"]! >= (double)s["modelled_step_seconds"]!); // the modelled work plus the real control plane
            Assert.InRange((double)s["mfu"]!, 0.4, 0.6);
            // The card's throughput within 5 %, and its days within 10 % once the stage is stretched to the card's
            // steps with the losses' cost taken out (constants fitted: 2, SimCostModelTests).
            Assert.InRange((double)s["tflops_per_gpu"]! / (double)s["card_tflops_per_gpu"]! - 1, -0.05, 0.05);
            Assert.InRange((double)s["days_at_card_steps"]! / (double)s["card_days"]! - 1, -0.10, 0.10);
        });
        var growth = json["growth"]!.AsArray();
        Assert.Equal(2, growth.Count);
        Assert.All(growth, g => Assert.True((double)g!["seconds"]! > 0));

        // The time account's parts add up to the simulated wall time: the coordinator's account ends at the completed
        // event, up to 10 ms of real time after it (as SimJobTests check); the parts are summed in the same order as
        // the account sums them, so that sum is bit-identical.
        var time = json["time"]!.AsObject();
        string[] parts = ["queued_seconds", "startup_seconds", "productive_seconds", "redone_seconds", "checkpoint_stall_seconds", "growth_seconds",
            "paused_seconds", "overhead_seconds", "recovery_seconds"];
        var accounted = parts.Sum(p => (double)time[p]!);
        Assert.Equal((double)time["accounted_seconds"]!, accounted);
        var wall = (double)time["wall_seconds"]!;
        Assert.InRange(accounted, wall - 0.01, wall);
        Assert.Equal(Math.Round(wall / 86400, 4), Math.Round((double)json["total_days"]!, 4));
        Assert.Equal((double)time["productive_seconds"]! / (accounted - (double)time["queued_seconds"]!), (double)json["ettr"]!);

        // One entry per injected loss, each with one recovery whose phases make up its recovery time.
        var failures = json["failures"]!.AsArray();
        Assert.Equal(5, failures.Count);
        Assert.Empty(json["losses_not_injected"]!.AsArray());
        Assert.Equal(["step 60", "growth into 51b", "step 150", "step 250", "step 280"], failures.Select(f => (string?)f!["planned"]));
        Assert.Equal("coordinator", (string?)failures[3]!["kind"]);
        Assert.Equal(["16b", "51b", "51b", "101b", "101b"], failures.Select(f => (string?)f!["stage"]));
        // A loss at a growth lands when the twin sees the job in the transition, or just after it (a transition of
        // well under a second can pass between two looks): at the boundary step, either way.
        Assert.InRange((long)failures[1]!["at_step"]!, 100, 105);
        Assert.All(failures.Where((_, i) => i != 1), f => Assert.False((bool)f!["during_growth"]!));
        Assert.All(failures, f =>
        {
            Assert.Equal(1, (int)f!["recoveries"]!);
            var phases = new[] { "detect_seconds", "decide_seconds", "allocate_seconds", "rebuild_seconds", "restore_seconds", "first_step_seconds", "waiting_seconds" }
                .Sum(p => (double)f[p]!);
            // Differences of running sums taken in another order: equal up to rounding (1e-9 s at these magnitudes).
            Assert.Equal((double)f["recovery_seconds"]!, phases, 1e-6);
            Assert.True((double)f["recovery_seconds"]! > 0);
            Assert.True((double)f["at_days"]! < (double)f["recovered_days"]!);
        });
        Assert.Equal(failures.Sum(f => (double)f!["recovery_seconds"]!), (double)time["recovery_seconds"]!, 1e-6);

        // Every step trained its batch once: 100 × 2304 + 100 × 2304 + 100 × 2160 samples.
        var samples = json["samples"]!.AsObject();
        Assert.True((bool)samples["exact"]!, samples.ToJsonString());
        Assert.Equal(300, (long)samples["steps"]!);
        Assert.Equal(676_800, (long)samples["expected"]!);
        Assert.Equal(676_800, (long)samples["consumed"]!);
        Assert.True((double)json["twin"]!["real_seconds"]! > 0);

        // The projection: this run's mean loss times Llama 3's rate on 192 GPUs over the failure-free days.
        var p = json["projection"]!.AsObject();
        var mean = failures.Average(f => (double)f!["cost_seconds"]!);
        Assert.Equal(mean, (double)p["mean_failure_cost_seconds"]!);
        Assert.Equal(192, (int)p["gpus"]!);
        Assert.Equal(466.0 / (54 * 24 * 16_384), (double)p["rate_per_gpu_hour"]!);
        var expected = (double)p["rate_per_gpu_hour"]! * 192 * (double)p["failure_free_days"]! * 24;
        Assert.Equal(expected, (double)p["expected_interruptions"]!);
        Assert.Equal((double)p["failure_free_days"]! + expected * mean / 86400, (double)p["projected_days"]!);
        Assert.InRange((double)p["failure_free_days"]!, 15, 26); // 300 steps stretched to the card's tokens
        Assert.Equal((double)json["total_days_at_card_steps"]!, (double)p["failure_free_days"]!);
        Assert.Equal(21.54, (double)p["card_stage_days"]!, 1e-9);
        Assert.Equal(26, (double)p["card_total_days_bound"]!);

        // The timeline: SVG with a bar per stage and growth, a line per loss.
        var svg = XDocument.Load(Path.Combine(_dir, "timeline.svg"));
        XNamespace ns = "http://www.w3.org/2000/svg";
        Assert.Equal(ns + "svg", svg.Root!.Name);
        Assert.Equal(5, svg.Descendants(ns + "line").Count(l => (string?)l.Attribute("stroke") == "#e15759"));
        Assert.Equal(3 + 2 + 5 + 1, svg.Descendants(ns + "rect").Count()); // stages, growth, recoveries, background
        // The run's checkpoints and silo state went with it.
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(_dir, "state")));
    }

    /// <summary>
    /// <c>--processes</c>: a control-plane silo and three servers of four simulated GPUs as silo processes on a real
    /// Redis, a small three-stage schedule at dp=4 × tp=2 (so each server holds half the job and its replicas the
    /// other half's), and three kill -9s: a server during the first stage, the other during the growth into the
    /// second stage, the coordinator's silo during the third. Every silo journals what it trained, so the sample
    /// ledger spans processes, killed ones included.
    /// </summary>
    [Fact]
    [Trait("Category", "EndToEnd")]
    public void With_processes_each_server_is_a_silo_process_on_redis_and_three_kills_lose_no_sample()
    {
        using var redis = new RedisServer();
        File.WriteAllText(Path.Combine(_dir, "small.json"), """
            {
              "name": "small-growth",
              "model": { "layers": 2, "hidden": 64, "heads": 2, "seq_len": 128, "mup": { "base_width": 64, "output_mult": 1.0 } },
              "train": { "global_batch": 16 },
              "optimizer": { "lr": 0.003, "min_lr": 0.0003, "warmup_steps": 10 },
              "layout": { "dp": 4, "tp": 2 },
              "stages": [
                { "name": "a", "steps": 100 },
                { "name": "b", "layers": 3, "hidden": 128, "heads": 4, "steps": 100, "mask_ramp_steps": 10 },
                { "name": "c", "layers": 4, "hidden": 128, "heads": 4, "steps": 100, "mask_ramp_steps": 10, "depth_placement": "interpolate" }
              ]
            }
            """);
        File.WriteAllText(Path.Combine(_dir, "losses.json"), """
            { "losses": [
                { "at_step": 60, "server": "random", "repair_hours": 0.002 },
                { "at_growth": "b", "server": "node1", "repair_hours": 0.002 },
                { "at_step": 250, "server": "coordinator", "repair_hours": 0.002 }
            ] }
            """);
        Directory.CreateDirectory(Path.Combine(_dir, "state"));
        var r = FlmProcess.Run(_dir, new Dictionary<string, string>(), TimeSpan.FromMinutes(8),
            "sim", "--processes", "--redis", redis.ConnectionString, "--base-port", "27211", "--servers", "2", "--gpus-per-server", "4", "--spares", "1",
            "--config", "small.json", "--failures", "losses.json", "--json", "--storage", "state");
        Assert.True(r.ExitCode == 0, r.Error);
        Assert.Contains("4 silos up in", r.Error);
        var json = JsonNode.Parse(r.Output)!.AsObject();
        Assert.Equal("completed", (string?)json["state"]);

        var failures = json["failures"]!.AsArray();
        Assert.Empty(json["losses_not_injected"]!.AsArray());
        Assert.Equal(["step 60", "growth into b", "step 250"], failures.Select(f => (string?)f!["planned"]));
        Assert.Equal(["worker", "worker", "coordinator"], failures.Select(f => (string?)f!["kind"]));
        // Coordinators and the scheduler live on the control-plane silo while it is up.
        Assert.Equal("control", (string?)failures[2]!["server"]);
        Assert.Equal("node1", (string?)failures[1]!["server"]);
        // This schedule's transitions take milliseconds: the loss lands in one, or in the steps just after it.
        Assert.InRange((long)failures[1]!["at_step"]!, 100, 249);
        Assert.Equal(1, (int)failures[2]!["recoveries"]!);

        // Every step trained its batch once, across four processes and three kill -9s: 300 × 16 samples.
        var samples = json["samples"]!.AsObject();
        Assert.True((bool)samples["exact"]!, samples.ToJsonString());
        Assert.Equal(300, (long)samples["steps"]!);
        Assert.Equal(4800, (long)samples["consumed"]!);

        // Nothing is left behind: no silo process, no key in Redis, no file.
        var silos = System.Diagnostics.Process.GetProcesses().Where(p => CommandLine(p.Id).Contains(Path.Combine(_dir, "state"), StringComparison.Ordinal)).ToList();
        Assert.Empty(silos);
        Assert.Equal("0", RedisCli(redis, "DBSIZE"));
        Assert.Empty(Directory.EnumerateFileSystemEntries(Path.Combine(_dir, "state")));
    }

    private static string CommandLine(int pid)
    {
        try
        {
            return File.ReadAllText($"/proc/{pid}/cmdline").Replace('\0', ' ');
        }
        catch (IOException)
        {
            return ""; // gone meanwhile
        }
    }

    private static string RedisCli(RedisServer redis, string command)
    {
        var start = new System.Diagnostics.ProcessStartInfo("redis-cli", ["-p", $"{redis.Port}", command]) { RedirectStandardOutput = true };
        using var cli = System.Diagnostics.Process.Start(start)!;
        var output = cli.StandardOutput.ReadToEnd().Trim();
        cli.WaitForExit();
        return output;
    }
}
