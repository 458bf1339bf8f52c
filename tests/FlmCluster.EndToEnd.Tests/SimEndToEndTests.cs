using System.Diagnostics;
using System.Text.RegularExpressions;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>
/// Simulated GPUs in silo processes (`flm cluster up --sim`): three servers of eight sim GPUs and a control node on
/// Redis, sharing one virtual clock through a file. FLM-101B's 16B shape on 16 of them runs its modelled steps
/// (15 s each at this layout) in real seconds, writes real checkpoints of simulated shards, and when one server is
/// killed with SIGKILL its ranks move to the third from their peers' replicas.
/// </summary>
[Trait("Category", "EndToEnd")]
public sealed class SimEndToEndTests(ITestOutputHelper output) : IDisposable
{
    private readonly Flm _flm = new("flm-e2e-sim-");

    public void Dispose() => _flm.Dispose();

    [Fact]
    public void A_job_on_simulated_gpus_in_silo_processes_survives_a_killed_server()
    {
        _flm.Up(nodes: 3, gpusPerNode: 8, basePort: 24311, sim: true);
        const int steps = 300;
        var dir = Path.Combine(_flm.Home, "checkpoints");
        var submit = _flm.Run("submit", "--config", "16b", "--set", "train.device=sim", "--set", "train.global_batch=192", "--layout", "dp=8,tp=2",
            "--micro-batches", "24", "--steps", $"{steps}", "--set", $"checkpoint.dir={dir}", "--set", $"checkpoint.interval={steps}", "--set", "checkpoint.memory_interval=10");
        Assert.True(submit.ExitCode == 0, submit.Output + submit.Error);
        var jobId = submit.Output.Trim();

        // Once a replica is held, the server of the job's rank 0 dies (the job holds two of the three). The only disk
        // checkpoint is the last step's, so wherever the kill lands the newest recovery point is the peers' replicas.
        var watch = Stopwatch.StartNew();
        var victim = _flm.KillRankZerosServerOnceReplicated(jobId, TimeSpan.FromMinutes(3));

        var follow = _flm.Run(TimeSpan.FromMinutes(5), "status", jobId, "--watch");
        output.WriteLine(follow.Output);
        output.WriteLine(follow.Error);
        Assert.True(follow.ExitCode == 0, follow.Output + follow.Error);
        Assert.Contains($"{jobId}: completed at step {steps}/{steps}", follow.Output);
        Assert.Matches(@"replaced: .*: 16 GPUs, layout dp=8,tp=2,pp=1,micro=24 → 16 GPUs, layout dp=8,tp=2,pp=1,micro=24; from the in-memory replicas of step \d+", follow.Error);
        var final = _flm.Run("status", jobId);
        var nodes = Regex.Matches(final.Output, @"^  (\w+): rank", RegexOptions.Multiline).Select(m => m.Groups[1].Value).ToList();
        Assert.Equal(2, nodes.Count);
        Assert.DoesNotContain(victim, nodes);

        // Real checkpoints of simulated ranks: one small shard per rank under a manifest the verifier accepts.
        var list = _flm.Run("checkpoint", "list", dir, "--checksums", "--json");
        Assert.True(list.ExitCode == 0, list.Output + list.Error);
        var last = System.Text.Json.JsonDocument.Parse(list.Output).RootElement.EnumerateArray().Last();
        Assert.Equal(steps, last.GetProperty("step").GetInt64());
        Assert.True(last.GetProperty("valid").GetBoolean(), list.Output);
        Assert.Equal(16, Directory.GetFiles(Path.Combine(dir, "step-00000300"), "shard-*.sim.json").Length);

        // The steps took their modelled time on the shared clock (15.25 s each at this layout, by the cost model): all
        // but the first after the recovery, which is the recovery's last phase, are productive.
        var productive = Regex.Match(final.Output, @"productive ([0-9.]+) s");
        Assert.True(productive.Success, final.Output);
        Assert.InRange(double.Parse(productive.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture), (steps - 1) * 15.25, steps * 15.25 + watch.Elapsed.TotalSeconds);
    }
}
