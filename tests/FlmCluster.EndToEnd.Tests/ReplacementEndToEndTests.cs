using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>
/// kill -9 of a GPU server while an idle server is free: the job does not wait for the dead one. Its lost ranks
/// move to the idle server in the same layout at once and come back from the in-memory replicas their peers
/// hold, newer than the checkpoint on disk; the trajectory is the uninterrupted one, bit for bit.
/// </summary>
[Trait("Category", "EndToEnd")]
public sealed class ReplacementEndToEndTests(ITestOutputHelper output) : IDisposable
{
    private readonly Flm _flm = new("flm-e2e-replace-");

    public void Dispose() => _flm.Dispose();

    private static string[] Job(string dir, int steps) => Flm.TinySubmit("dp=2,tp=2", steps, dir, "checkpoint.interval=60", "checkpoint.memory_interval=5");

    [Fact]
    public void A_dead_servers_ranks_move_to_an_idle_server_and_come_back_from_their_peers_replicas()
    {
        _flm.Up(nodes: 3, gpusPerNode: 2, basePort: 21911);
        const int steps = 120;
        var killed = Path.Combine(_flm.Home, "killed");
        var submit = _flm.Run(Job(killed, steps));
        Assert.True(submit.ExitCode == 0, submit.Output + submit.Error);
        var jobId = submit.Output.Trim();

        // node1 dies once the in-memory replicas are newer than the checkpoint on disk (step 60). The next one is the
        // last step's, so a kill that lands late on a loaded machine still finds the replicas newest.
        var watch = Stopwatch.StartNew();
        Status before;
        while (true)
        {
            before = StatusOf(jobId);
            if (before.Checkpoint >= 0 && before.Replica > before.Checkpoint)
                break;
            Assert.True(watch.Elapsed < TimeSpan.FromMinutes(4), $"no replica newer than the disk checkpoint: {before}");
        }
        Assert.Equal(["node0", "node1"], before.Nodes);
        Process.GetProcessById(_flm.SiloPid("node1")).Kill();
        output.WriteLine($"killed node1 {watch.Elapsed.TotalSeconds:0.0} s after the submission, seen at {before.Text}");

        var follow = _flm.Run(TimeSpan.FromMinutes(10), "status", jobId, "--watch");
        Assert.True(follow.ExitCode == 0, follow.Output + follow.Error);
        output.WriteLine(follow.Error); // the events of --watch are progress: standard error
        Assert.DoesNotContain("shrunk", follow.Error);
        Assert.DoesNotContain("waiting up to", follow.Error);
        var replaced = Regex.Match(follow.Error, @"replaced: .*: 4 GPUs, layout dp=2,tp=2,pp=1,micro=1 → 4 GPUs, layout dp=2,tp=2,pp=1,micro=1; from the in-memory replicas of step (\d+)");
        Assert.True(replaced.Success, follow.Error);
        Assert.True(long.Parse(replaced.Groups[1].Value) > before.Checkpoint, follow.Error);
        Assert.Matches(@"recovered: at step \d+ in \d+\.\d s: detect", follow.Error);
        Assert.Contains($"{jobId}: completed at step {steps}/{steps}", follow.Output);
        Assert.Equal(["node0", "node2"], StatusOf(jobId).Nodes);

        // The same job without a failure (on the servers that are left): the final checkpoints hold the same bytes.
        var straight = Path.Combine(_flm.Home, "straight");
        var uninterrupted = _flm.Run(TimeSpan.FromMinutes(10), [.. Job(straight, steps), "--watch"]);
        Assert.True(uninterrupted.ExitCode == 0, uninterrupted.Output + uninterrupted.Error);
        Assert.Equal(Flm.ShardChecksums(straight, steps), Flm.ShardChecksums(killed, steps));
    }

    /// <summary>What `flm status` says of a job: its recovery points and the servers of its ranks.</summary>
    private sealed record Status(long Checkpoint, long Replica, List<string> Nodes, string Text);

    private Status StatusOf(string jobId)
    {
        var r = _flm.Run("status", jobId);
        Assert.True(r.ExitCode == 0, r.Output + r.Error);
        long Step(string pattern) => Regex.Match(r.Output, pattern) is { Success: true } m ? long.Parse(m.Groups[1].Value) : -1;
        var nodes = Regex.Matches(r.Output, @"^  (\w+): rank", RegexOptions.Multiline).Select(m => m.Groups[1].Value).Distinct().Order().ToList();
        return new Status(Step(@"checkpoint on disk at step (\d+)"), Step(@"in-memory replicas at step (\d+)"), nodes, r.Output);
    }
}
