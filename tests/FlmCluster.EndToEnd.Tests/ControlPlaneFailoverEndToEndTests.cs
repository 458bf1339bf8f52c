using System.Diagnostics;
using System.Text.Json;
using System.Text.RegularExpressions;

namespace FlmCluster.EndToEnd.Tests;

/// <summary>
/// kill -9 of the silos that host the job's coordinator and the scheduler, one after the other, in the middle
/// of a job that checkpoints every other step: both reactivate on other silos from their Redis state, and the
/// job continues from its committed step without redoing or skipping a sample; its final state is the
/// uninterrupted run's, bit for bit.
/// </summary>
[Trait("Category", "EndToEnd")]
public sealed class ControlPlaneFailoverEndToEndTests : IDisposable
{
    private readonly Flm _flm = new("flm-e2e-failover-");

    public void Dispose() => _flm.Dispose();

    private static string[] Job(string dir, int steps) => Flm.TinySubmit("dp=2,tp=2", steps, dir, "checkpoint.interval=2");

    [Fact]
    public void The_coordinator_and_the_scheduler_move_to_other_silos_and_the_job_loses_no_step()
    {
        _flm.Up(nodes: 2, gpusPerNode: 2, basePort: 21711, controlNodes: 2);
        const int steps = 160; // long enough that both kills land before the job ends, on a loaded machine too
        var killed = Path.Combine(_flm.Home, "killed");
        var submit = _flm.Run(Job(killed, steps));
        Assert.True(submit.ExitCode == 0, submit.Output + submit.Error);
        var jobId = submit.Output.Trim();

        // Both control-plane silos die, mid-job, one after the other; the second takes whatever moved to it.
        foreach (var (node, atStep) in new[] { ("control", 15L), ("control1", 40L) })
        {
            _flm.WaitForStep(jobId, atStep);
            Process.GetProcessById(_flm.SiloPid(node)).Kill();
        }

        var follow = _flm.Run(TimeSpan.FromMinutes(10), "status", jobId, "--watch");
        Assert.True(follow.ExitCode == 0, follow.Output + follow.Error);
        Assert.Contains($"{jobId}: completed at step {steps}/{steps}", follow.Output);
        var status = _flm.Run("status", jobId);
        Assert.True(Regex.Matches(status.Output + follow.Error, "resumed: coordinator activated on").Count >= 1, follow.Error); // events: standard error
        // Nothing redone: repeated steps were answered from the workers' reports, nothing was rolled back.
        Assert.True(Regex.IsMatch(status.Output, @"redone 0\.0 s"), status.Output + follow.Error);
        using (var final = JsonDocument.Parse(File.ReadAllText(Path.Combine(killed, $"step-{steps:D8}", "manifest.json"))))
            Assert.Equal(steps * 8L, final.RootElement.GetProperty("samples_consumed").GetInt64());

        // The scheduler, on another silo now, freed the job's GPUs and runs the next job: the same one uninterrupted.
        var nodes = _flm.Run("nodes");
        Assert.Contains("4 of 4 GPUs free", nodes.Output);
        var straight = Path.Combine(_flm.Home, "straight");
        var uninterrupted = _flm.Run(TimeSpan.FromMinutes(10), [.. Job(straight, steps), "--watch"]);
        Assert.True(uninterrupted.ExitCode == 0, uninterrupted.Output + uninterrupted.Error);
        Assert.Equal(Flm.ShardChecksums(straight, steps), Flm.ShardChecksums(killed, steps));
    }
}
